//! Private files: the state directory and what is in it (dead letters with message content and
//! interaction tokens, the spool, checkpoints, spent command ids) are for the router's user
//! alone, whatever the umask: directories 0700, files 0600.
//!
//! Owns creating them so and, at start, tightening what an earlier version or a person left
//! readable (`secure`). What goes in the files is each format's own business.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Mode of a directory under the state directory, and of the state directory itself.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a file under the state directory.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents with `DIR_MODE`.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)
}

/// Options that create a file with `FILE_MODE` (an existing file keeps its mode: `secure`
/// fixes those at start).
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
}

/// Creates (or truncates) `path` for writing, with `FILE_MODE` if new.
pub fn create(path: &Path) -> io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// A path whose mode `secure` changed, and the mode it had.
#[derive(Debug, PartialEq, Eq)]
pub struct Tightened {
    /// The file or directory.
    pub path: PathBuf,
    /// Its mode before (permission bits only).
    pub was: u32,
}

/// Makes `state_dir` if it is missing; otherwise takes every permission for group and others
/// off it, the directories in it and their files (not following symbolic links), and returns
/// what it changed so the caller can say so.
pub fn secure(state_dir: &Path) -> io::Result<Vec<Tightened>> {
    let mut changed = Vec::new();
    if !state_dir.exists() {
        create_dir(state_dir)?;
        return Ok(changed);
    }
    tighten(state_dir, 2, &mut changed)?;
    Ok(changed)
}

#[cfg(unix)]
fn tighten(path: &Path, depth: u32, changed: &mut Vec<Tightened>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    let (is_dir, wanted) = if meta.is_dir() {
        (true, DIR_MODE)
    } else if meta.is_file() {
        (false, FILE_MODE)
    } else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & wanted))?;
        changed.push(Tightened {
            path: path.to_owned(),
            was: mode,
        });
    }
    if is_dir && depth > 0 {
        for entry in std::fs::read_dir(path)? {
            tighten(&entry?.path(), depth - 1, changed)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_: &Path, _: u32, _: &mut Vec<Tightened>) -> io::Result<()> {
    Ok(())
}

/// The permission bits of `path`, for tests.
#[cfg(all(test, unix))]
pub fn mode_of(path: &Path) -> io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::symlink_metadata(path)?.permissions().mode() & 0o777)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shardhook-files-{tag}-{}", std::process::id()))
    }

    #[test]
    fn directories_and_files_are_made_for_their_owner_alone() {
        let root = dir("made");
        let nested = root.join("a/b");
        create_dir(&nested).unwrap();
        for d in [&root, &root.join("a"), &nested] {
            assert_eq!(mode_of(d).unwrap(), 0o700, "{}", d.display());
        }
        let file = nested.join("f");
        create(&file).unwrap();
        assert_eq!(mode_of(&file).unwrap(), 0o600);
        options()
            .append(true)
            .create(true)
            .open(root.join("g"))
            .unwrap();
        assert_eq!(mode_of(&root.join("g")).unwrap(), 0o600);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn secure_tightens_what_others_could_read_and_says_what() {
        let root = dir("secure");
        std::fs::create_dir_all(root.join("spool")).unwrap();
        let chmod = |p: &Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        std::fs::write(root.join("dead-letters.jsonl"), "").unwrap();
        std::fs::write(root.join("spool/shard-0.log"), "").unwrap();
        std::fs::write(root.join("private"), "").unwrap();
        chmod(&root, 0o755);
        chmod(&root.join("spool"), 0o775);
        chmod(&root.join("dead-letters.jsonl"), 0o644);
        chmod(&root.join("spool/shard-0.log"), 0o666);
        chmod(&root.join("private"), 0o600);
        let mut changed = secure(&root).unwrap();
        changed.sort_by(|a, b| a.path.cmp(&b.path));
        let expect = |p: PathBuf, was| Tightened { path: p, was };
        assert_eq!(
            changed,
            vec![
                expect(root.clone(), 0o755),
                expect(root.join("dead-letters.jsonl"), 0o644),
                expect(root.join("spool"), 0o775),
                expect(root.join("spool/shard-0.log"), 0o666),
            ]
        );
        assert_eq!(mode_of(&root).unwrap(), 0o700);
        assert_eq!(mode_of(&root.join("spool")).unwrap(), 0o700);
        assert_eq!(mode_of(&root.join("dead-letters.jsonl")).unwrap(), 0o600);
        assert_eq!(mode_of(&root.join("spool/shard-0.log")).unwrap(), 0o600);
        assert!(secure(&root).unwrap().is_empty(), "nothing left to fix");
        std::fs::remove_dir_all(&root).unwrap();
        assert!(secure(&root).unwrap().is_empty());
        assert_eq!(
            mode_of(&root).unwrap(),
            0o700,
            "a missing directory is made private"
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}
