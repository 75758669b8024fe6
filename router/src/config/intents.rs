//! Gateway intents: the names Discord documents and their bits.
//!
//! Owns parsing intents from config (a list of names or a number). It does not check which
//! intents are privileged for a bot; Discord answers that with close code 4014.

/// Every intent Discord documents, by name, with its bit.
pub const INTENTS: &[(&str, u64)] = &[
    ("GUILDS", 1 << 0),
    ("GUILD_MEMBERS", 1 << 1),
    ("GUILD_MODERATION", 1 << 2),
    ("GUILD_EXPRESSIONS", 1 << 3),
    ("GUILD_INTEGRATIONS", 1 << 4),
    ("GUILD_WEBHOOKS", 1 << 5),
    ("GUILD_INVITES", 1 << 6),
    ("GUILD_VOICE_STATES", 1 << 7),
    ("GUILD_PRESENCES", 1 << 8),
    ("GUILD_MESSAGES", 1 << 9),
    ("GUILD_MESSAGE_REACTIONS", 1 << 10),
    ("GUILD_MESSAGE_TYPING", 1 << 11),
    ("DIRECT_MESSAGES", 1 << 12),
    ("DIRECT_MESSAGE_REACTIONS", 1 << 13),
    ("DIRECT_MESSAGE_TYPING", 1 << 14),
    ("MESSAGE_CONTENT", 1 << 15),
    ("GUILD_SCHEDULED_EVENTS", 1 << 16),
    ("AUTO_MODERATION_CONFIGURATION", 1 << 20),
    ("AUTO_MODERATION_EXECUTION", 1 << 21),
    ("GUILD_MESSAGE_POLLS", 1 << 24),
    ("DIRECT_MESSAGE_POLLS", 1 << 25),
];

/// The union of every documented intent bit.
pub fn all_bits() -> u64 {
    INTENTS.iter().fold(0, |acc, (_, bit)| acc | bit)
}

/// Parses one intent name (case-insensitive).
pub fn bit_of(name: &str) -> Option<u64> {
    INTENTS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
        .map(|(_, bit)| *bit)
}

/// Parses intents from a TOML value: an integer bit set or an array of names.
pub fn from_value(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::Integer(n) => {
            let n = u64::try_from(*n).map_err(|_| format!("{n} is negative"))?;
            let unknown = n & !all_bits();
            if unknown != 0 {
                return Err(format!("{n} sets undocumented intent bits {unknown:#x}"));
            }
            Ok(n)
        }
        toml::Value::Array(names) => names.iter().try_fold(0, |acc, name| {
            let name = name
                .as_str()
                .ok_or_else(|| format!("expected intent names as strings, found {name}"))?;
            let bit = bit_of(name).ok_or_else(|| {
                let allowed: Vec<&str> = INTENTS.iter().map(|(n, _)| *n).collect();
                format!("unknown intent `{name}`; allowed: {}", allowed.join(", "))
            })?;
            Ok(acc | bit)
        }),
        other => Err(format!(
            "expected a list of intent names or a number, found {}",
            other.type_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_parse_to_the_same_bits() {
        let names: toml::Value = toml::Value::Array(vec!["guilds".into(), "GUILD_MESSAGES".into()]);
        assert_eq!(from_value(&names), Ok(513));
        assert_eq!(from_value(&toml::Value::Integer(513)), Ok(513));
    }

    #[test]
    fn unknown_names_and_bits_are_refused_with_the_allowed_list() {
        let err = from_value(&toml::Value::Array(vec!["GUILD_MESAGES".into()])).unwrap_err();
        assert!(
            err.contains("GUILD_MESAGES") && err.contains("GUILD_MESSAGES"),
            "{err}"
        );
        assert!(from_value(&toml::Value::Integer(1 << 40)).is_err());
        assert!(from_value(&toml::Value::Boolean(true)).is_err());
    }
}
