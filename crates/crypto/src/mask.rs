/// Values shorter than this show nothing at all: for a short value even four characters
/// at each end would give away most of it.
const MIN_LEN_TO_REVEAL: usize = 16;

/// Masks a secret for listings: the first 4 and last 4 characters of a long value
/// (`sk_l…9fQ2`), `****` for anything shorter than 16 characters.
pub fn mask(value: &str) -> String {
    let len = value.chars().count();
    if len < MIN_LEN_TO_REVEAL {
        return "****".to_owned();
    }
    let head: String = value.chars().take(4).collect();
    let tail: String = value.chars().skip(len - 4).collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_show_four_at_each_end() {
        assert_eq!(mask("sk_live_0123456789abc9fQ2"), "sk_l…9fQ2");
    }

    #[test]
    fn short_values_show_nothing() {
        assert_eq!(mask(""), "****");
        assert_eq!(mask("hunter2"), "****");
        assert_eq!(mask("123456789012345"), "****");
    }

    #[test]
    fn multibyte_characters_are_not_split() {
        assert_eq!(mask("ééééxxxxxxxxxxxxüüüü"), "éééé…üüüü");
    }
}
