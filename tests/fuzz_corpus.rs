//! Replays every fuzz target's committed corpus (`fuzz/corpus/TARGET/*`) through the same entry
//! points the fuzz targets call (`shardhook::fuzzing`), without libFuzzer: a short run of each
//! target in the test command. `scripts/fuzz` runs the real campaigns.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("gateway_payload", shardhook::fuzzing::gateway_payload),
    ("inflate", shardhook::fuzzing::inflate),
    ("config", shardhook::fuzzing::config),
    ("spool", shardhook::fuzzing::spool),
    ("checkpoint", shardhook::fuzzing::checkpoint),
    ("control_command", shardhook::fuzzing::control_command),
];

#[test]
fn every_fuzz_targets_corpus_runs_clean() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = corpus.join(name);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            // A panic names the input: the test harness prints this line before it.
            eprintln!("{name}: {}", path.display());
            target(&data);
            inputs += 1;
        }
        assert!(inputs > 0, "{name} has an empty corpus");
    }
    // Every target under fuzz/ is replayed here.
    let listed: Vec<String> = std::fs::read_dir(corpus.join("../fuzz_targets"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for name in &listed {
        assert!(
            TARGETS.iter().any(|(t, _)| t == name),
            "{name} is not replayed"
        );
    }
}
