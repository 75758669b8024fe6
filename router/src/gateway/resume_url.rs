//! Which resume URLs a shard may connect to with the bot token.
//!
//! A RESUME carries the token, so the URL it goes to must be Discord's. The gateway URL comes
//! from `GET /gateway/bot` over the configured API (trusted); a resume URL may come from a
//! checkpoint read back from disk or from Redis, which an attacker who can write there could
//! point anywhere. A resume URL is taken only on the gateway URL's own scheme (`wss://` for
//! Discord) and on its domain: the gateway's host itself, or a host under the gateway host's
//! parent domain (`gateway.discord.gg` → `*.discord.gg`, where Discord's
//! `gateway-us-east1-b.discord.gg` lives). A gateway on an IP address or a single-label name
//! (a local simulator) allows only its own host and port. Anything else: the shard identifies
//! anew through the gateway URL.
//!
//! Owns the rule only; `shard` applies it to every session it is given or READY names.

use reqwest::Url;
use tracing::warn;

/// Why a resume URL was refused, for the log line that says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("`{url}` is not a URL: {reason}")]
    NotAUrl { url: String, reason: String },
    #[error("`{url}` uses {scheme}://, the gateway URL {gateway}://")]
    Scheme {
        url: String,
        scheme: String,
        gateway: String,
    },
    #[error("`{url}` is not on the gateway's domain ({domain})")]
    ForeignHost { url: String, domain: String },
}

/// Whether the shard may RESUME at `resume`, given the gateway URL `gateway` from
/// `/gateway/bot`.
pub(crate) fn check(resume: &str, gateway: &str) -> Result<(), Refused> {
    let parsed = Url::parse(resume).map_err(|e| Refused::NotAUrl {
        url: resume.to_owned(),
        reason: e.to_string(),
    })?;
    let base = Url::parse(gateway).map_err(|e| Refused::NotAUrl {
        url: gateway.to_owned(),
        reason: e.to_string(),
    })?;
    if parsed.scheme() != base.scheme() {
        return Err(Refused::Scheme {
            url: resume.to_owned(),
            scheme: parsed.scheme().to_owned(),
            gateway: base.scheme().to_owned(),
        });
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Refused::ForeignHost {
            url: resume.to_owned(),
            domain: "a URL without user information".to_owned(),
        });
    }
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let home = base.host_str().unwrap_or_default().to_ascii_lowercase();
    let home = home.trim_end_matches('.');
    let host = host.trim_end_matches('.');
    let named = !home.starts_with('[') && home.parse::<std::net::IpAddr>().is_err();
    let labels: Vec<&str> = home.split('.').collect();
    if named && labels.len() >= 2 {
        // `gateway.discord.gg` → `discord.gg`; a two-label gateway host is its own domain.
        let domain = if labels.len() >= 3 {
            labels[1..].join(".")
        } else {
            home.to_owned()
        };
        let inside = host == domain || host.ends_with(&format!(".{domain}"));
        if !inside {
            return Err(Refused::ForeignHost {
                url: resume.to_owned(),
                domain: format!("*.{domain}"),
            });
        }
    } else if host != home {
        return Err(Refused::ForeignHost {
            url: resume.to_owned(),
            domain: home.to_owned(),
        });
    }
    Ok(())
}

/// The resume URL to keep from READY: its own if it passes `check`, else the gateway URL
/// (Discord takes a RESUME there too).
pub(crate) fn from_ready(resume: String, gateway: &str) -> String {
    match check(&resume, gateway) {
        Ok(()) => resume,
        Err(refused) => {
            warn!("READY's resume URL was refused ({refused}); resuming through the gateway URL");
            gateway.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISCORD: &str = "wss://gateway.discord.gg";

    #[test]
    fn discords_regional_resume_urls_are_taken() {
        for url in [
            "wss://gateway-us-east1-b.discord.gg",
            "wss://gateway-us-east1-b.discord.gg/",
            "wss://gateway.discord.gg/?v=10",
            "wss://GATEWAY-US-WEST1-A.discord.gg:443",
            "wss://gateway.discord.gg:8443/",
            "wss://discord.gg",
        ] {
            assert_eq!(check(url, DISCORD), Ok(()), "{url}");
        }
    }

    #[test]
    fn other_hosts_schemes_and_user_info_are_refused() {
        for url in [
            "ws://attacker/",
            "wss://attacker.example/",
            "wss://discord.gg.attacker.example/",
            "wss://evildiscord.gg/",
            "ws://gateway-us-east1-b.discord.gg/",
            "https://gateway.discord.gg/",
            "wss://169.254.169.254/",
            "wss://user@gateway.discord.gg/",
            "not a url",
            "",
        ] {
            assert!(check(url, DISCORD).is_err(), "{url} was taken");
        }
    }

    #[test]
    fn a_local_gateway_allows_only_its_own_host() {
        let local = "ws://127.0.0.1:4000/gateway";
        assert_eq!(check("ws://127.0.0.1:4000/resume", local), Ok(()));
        assert_eq!(check("ws://127.0.0.1:1", local), Ok(()));
        assert!(check("ws://127.0.0.2:4000/resume", local).is_err());
        assert!(check("ws://localhost:4000/resume", local).is_err());
        assert!(check("ws://[::1]:4000/resume", local).is_err());
        assert_eq!(
            check("ws://localhost:4000/resume", "ws://localhost:4001/"),
            Ok(())
        );
    }

    #[test]
    fn the_refusal_says_what_was_wrong() {
        let err = check("ws://attacker/", DISCORD).unwrap_err().to_string();
        assert!(err.contains("ws://") && err.contains("wss://"), "{err}");
        let err = check("wss://attacker.example/", DISCORD)
            .unwrap_err()
            .to_string();
        assert!(err.contains("*.discord.gg"), "{err}");
    }
}
