//! The standard AWS credentials chain, for `auth = "aws-iam"` endpoints, on the AWS SDK's own
//! providers (`aws-config`).
//!
//! Owns which links are tried and in which order, as the AWS SDKs try them: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), the shared credentials
//! and config files (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`, `AWS_PROFILE`; static
//! keys, or a role assumed from them), a web identity token (`AWS_WEB_IDENTITY_TOKEN_FILE`,
//! `AWS_ROLE_ARN`: EKS service accounts), the ECS/EKS container endpoint
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI`, with
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)`), and EC2's instance metadata service with an
//! IMDSv2 token (`AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides its address,
//! `AWS_EC2_METADATA_DISABLED=true` skips it). It reads the environment it is given (the
//! process's in the binary) except for the container endpoint, which `aws-config` reads from
//! the process itself. It leaves caching and refreshing to `aws_credentials`, and never keeps
//! or logs a secret.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use aws_config::imds;
use aws_config::provider_config::ProviderConfig;
use aws_config::web_identity_token::{StaticConfiguration, WebIdentityTokenCredentialsProvider};
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::ProvideCredentials;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_smithy_types::error::display::DisplayErrorContext;

use super::aws_credentials::{Fetch, FetchError, Fetched, Source};
use super::sigv4::Credentials;

/// A credential variable set without its partner: a mistake to refuse at start, not a link to
/// skip.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("AWS credentials: environment variable {set} is set but {missing} is not")]
pub struct PartialCredentials {
    /// The variable that is set.
    pub set: &'static str,
    /// The one it needs.
    pub missing: &'static str,
}

/// The chain, as read from an environment.
#[derive(Clone)]
pub struct Chain(Arc<Inner>);

struct Inner {
    /// Keys from the environment, which never change while the process runs.
    env_keys: Option<Credentials>,
    /// The shared credentials file, then the config file.
    files: [PathBuf; 2],
    profile: String,
    web_identity: Option<StaticConfiguration>,
    /// `None` when `AWS_EC2_METADATA_DISABLED` is `true`.
    imds: Option<imds::Client>,
    /// For the links that call AWS (assumed roles, web identity): the region and the SDK's
    /// behaviour version.
    provider_config: ProviderConfig,
}

impl Chain {
    /// The chain for `env` (`std::env::vars()` in the binary); `region` is where roles are
    /// assumed (STS) unless `AWS_REGION` says otherwise.
    pub fn from_env(
        env: impl IntoIterator<Item = (String, String)>,
        region: &str,
    ) -> Result<Chain, PartialCredentials> {
        let env: HashMap<String, String> = env
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .collect();
        let var = |name: &str| env.get(name).cloned();
        let env_keys = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                Some(Credentials::new(id, secret, var("AWS_SESSION_TOKEN")))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(PartialCredentials {
                    set: "AWS_ACCESS_KEY_ID",
                    missing: "AWS_SECRET_ACCESS_KEY",
                })
            }
            (None, Some(_)) => {
                return Err(PartialCredentials {
                    set: "AWS_SECRET_ACCESS_KEY",
                    missing: "AWS_ACCESS_KEY_ID",
                })
            }
        };
        let home = var("HOME").unwrap_or_default();
        let file = |var_name: &str, default: &str| {
            var(var_name).map_or_else(|| PathBuf::from(&home).join(default), PathBuf::from)
        };
        let files = [
            file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"),
            file("AWS_CONFIG_FILE", ".aws/config"),
        ];
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| region.to_owned());
        let provider_config = ProviderConfig::default()
            .with_region(Some(Region::new(region)))
            .with_behavior_version(Some(BehaviorVersion::latest()));
        let web_identity = match (var("AWS_WEB_IDENTITY_TOKEN_FILE"), var("AWS_ROLE_ARN")) {
            (Some(token_file), Some(role_arn)) => Some(StaticConfiguration {
                web_identity_token_file: token_file.into(),
                role_arn,
                session_name: var("AWS_ROLE_SESSION_NAME")
                    .unwrap_or_else(|| "shardhook".to_owned()),
            }),
            _ => None,
        };
        let disabled =
            var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let imds = (!disabled).then(|| {
            let builder = imds::Client::builder().configure(&provider_config);
            let builder = match var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
                // A bad override is no reason to fail: the link reports it on each fetch.
                Some(endpoint) => builder.endpoint(endpoint).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "AWS_EC2_METADATA_SERVICE_ENDPOINT is not a URL; using the default address");
                    imds::Client::builder().configure(&provider_config)
                }),
                None => builder,
            };
            builder.build()
        });
        Ok(Chain(Arc::new(Inner {
            env_keys,
            files,
            profile: var("AWS_PROFILE").unwrap_or_else(|| "default".to_owned()),
            web_identity,
            imds,
            provider_config,
        })))
    }

    /// The first link with credentials, or why none had any.
    async fn fetch_once(self) -> Result<Fetched, FetchError> {
        let inner = &*self.0;
        if let Some(keys) = &inner.env_keys {
            return Ok(Fetched {
                credentials: keys.clone(),
                expires: None,
                source: "environment",
            });
        }
        let mut skipped = vec!["environment: AWS_ACCESS_KEY_ID is not set".to_owned()];
        let mut links: Vec<(&'static str, Box<dyn ProvideCredentials>)> = Vec::new();
        // Built anew on each fetch: the provider keeps the files it parsed.
        if let Some(files) = profile_files(&inner.files).await {
            let provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
                .configure(&inner.provider_config)
                .profile_files(files)
                .profile_name(&inner.profile)
                .build();
            links.push(("profile file", Box::new(provider)));
        } else {
            skipped.push(format!(
                "profile file: neither {} nor {} exists",
                inner.files[0].display(),
                inner.files[1].display()
            ));
        }
        if let Some(web_identity) = &inner.web_identity {
            let provider = WebIdentityTokenCredentialsProvider::builder()
                .configure(&inner.provider_config)
                .static_configuration(web_identity.clone())
                .build();
            links.push(("web identity token", Box::new(provider)));
        }
        let ecs = aws_config::ecs::EcsCredentialsProvider::builder()
            .configure(&inner.provider_config)
            .build();
        links.push(("container endpoint", Box::new(ecs)));
        match &inner.imds {
            Some(client) => {
                let provider = aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                    .configure(&inner.provider_config)
                    .imds_client(client.clone())
                    .build();
                links.push(("instance metadata (IMDSv2)", Box::new(provider)));
            }
            None => skipped.push("instance metadata: AWS_EC2_METADATA_DISABLED is true".to_owned()),
        }
        for (source, link) in links {
            match link.provide_credentials().await {
                Ok(creds) => {
                    return Ok(Fetched {
                        credentials: Credentials::new(
                            creds.access_key_id().to_owned(),
                            creds.secret_access_key().to_owned(),
                            creds.session_token().map(str::to_owned),
                        ),
                        expires: creds.expiry(),
                        source,
                    })
                }
                Err(e @ CredentialsError::CredentialsNotLoaded(_)) => {
                    skipped.push(format!("{source}: {}", DisplayErrorContext(&e)));
                }
                Err(e) => {
                    return Err(FetchError(format!(
                        "the {source} source failed: {}",
                        DisplayErrorContext(&e)
                    )))
                }
            }
        }
        Err(FetchError(format!(
            "no source in the chain has credentials ({})",
            skipped.join("; ")
        )))
    }
}

/// The shared credentials and config files as they are now, read on the blocking pool; `None`
/// if neither exists.
async fn profile_files(paths: &[PathBuf; 2]) -> Option<EnvConfigFiles> {
    let paths = paths.clone();
    let contents =
        tokio::task::spawn_blocking(move || paths.map(|p| std::fs::read_to_string(p).ok()))
            .await
            .ok()?;
    let kinds = [EnvConfigFileKind::Credentials, EnvConfigFileKind::Config];
    let mut builder = EnvConfigFiles::builder()
        .include_default_credentials_file(false)
        .include_default_config_file(false);
    let mut any = false;
    for (kind, text) in kinds.into_iter().zip(contents) {
        if let Some(text) = text {
            builder = builder.with_contents(kind, text);
            any = true;
        }
    }
    any.then(|| builder.build())
}

impl Source for Chain {
    fn fetch(&self) -> Fetch {
        Box::pin(self.clone().fetch_once())
    }

    fn watched_files(&self) -> Vec<PathBuf> {
        if self.0.env_keys.is_some() {
            // The environment comes first and never changes.
            return Vec::new();
        }
        self.0.files.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_key_id_without_its_secret_is_refused_by_name() {
        let err = Chain::from_env(env(&[("AWS_ACCESS_KEY_ID", "AKIDHALF")]), "us-east-1")
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "AWS credentials: environment variable AWS_ACCESS_KEY_ID is set but \
             AWS_SECRET_ACCESS_KEY is not"
        );
        // An empty value counts as unset, as in the AWS SDKs.
        let err = Chain::from_env(
            env(&[
                ("AWS_ACCESS_KEY_ID", ""),
                ("AWS_SECRET_ACCESS_KEY", "s3cret"),
            ]),
            "us-east-1",
        )
        .err()
        .unwrap();
        assert!(!err.to_string().contains("s3cret"));
        assert_eq!(err.missing, "AWS_ACCESS_KEY_ID");
    }

    #[tokio::test]
    async fn keys_in_the_environment_come_first_and_watch_no_file() {
        let chain = Chain::from_env(
            env(&[
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "s3cret"),
                ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ]),
            "us-east-1",
        )
        .unwrap();
        assert!(chain.watched_files().is_empty());
        let fetched = chain.fetch().await.unwrap();
        assert_eq!(fetched.source, "environment");
        assert_eq!(fetched.expires, None);
        assert!(format!("{:?}", fetched.credentials).contains("\"AKIDENV\""));
    }
}
