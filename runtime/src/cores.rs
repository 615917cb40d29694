//! Core selection: SPDK-style masks (`-m 0x3`, `-m [0,1]`) and lists
//! (`--cores 0,1,4-6`).

/// Why a core specification was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreSpecError {
    #[error("empty core specification")]
    Empty,
    #[error("core mask {0:?} is not hexadecimal")]
    BadMask(String),
    #[error("core mask {0:?} selects no core")]
    EmptyMask(String),
    #[error("core list entry {0:?} is not a core number or range")]
    BadListEntry(String),
    #[error("core {0} is listed twice")]
    Duplicate(usize),
    #[error("core {0} is out of range (max {max})", max = MAX_CORE)]
    OutOfRange(usize),
}

/// Highest core number accepted.
pub const MAX_CORE: usize = 1023;

/// Parse an SPDK core mask: hexadecimal with or without `0x` (`0x3`, `f`),
/// or a bracketed list (`[0,1,4-6]`), as SPDK's `-m` takes it. Cores come
/// back in ascending order.
pub fn parse_core_mask(s: &str) -> Result<Vec<usize>, CoreSpecError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(CoreSpecError::Empty);
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return parse_core_list(inner);
    }
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CoreSpecError::BadMask(s.to_string()));
    }
    let mut cores = Vec::new();
    // Least significant digit last: walk the digits from the right.
    for (i, c) in hex.chars().rev().enumerate() {
        let v = c.to_digit(16).expect("checked hex digit");
        for b in 0..4 {
            if v & (1 << b) != 0 {
                let core = i * 4 + b;
                if core > MAX_CORE {
                    return Err(CoreSpecError::OutOfRange(core));
                }
                cores.push(core);
            }
        }
    }
    if cores.is_empty() {
        return Err(CoreSpecError::EmptyMask(s.to_string()));
    }
    Ok(cores)
}

/// Parse a core list: `0,1`, `0-3`, `0,2-3`. Order is kept as written.
pub fn parse_core_list(s: &str) -> Result<Vec<usize>, CoreSpecError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(CoreSpecError::Empty);
    }
    let mut cores = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let bad = || CoreSpecError::BadListEntry(part.to_string());
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<usize>().map_err(|_| bad())?,
                b.trim().parse::<usize>().map_err(|_| bad())?,
            ),
            None => {
                let v = part.parse::<usize>().map_err(|_| bad())?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        for c in lo..=hi {
            if c > MAX_CORE {
                return Err(CoreSpecError::OutOfRange(c));
            }
            if cores.contains(&c) {
                return Err(CoreSpecError::Duplicate(c));
            }
            cores.push(c);
        }
    }
    Ok(cores)
}

/// Either form: `0x..` or `[..]` is a mask, anything else a list.
pub fn parse_cores(s: &str) -> Result<Vec<usize>, CoreSpecError> {
    let t = s.trim();
    if t.starts_with("0x") || t.starts_with("0X") || t.starts_with('[') {
        parse_core_mask(t)
    } else {
        parse_core_list(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(parse_core_mask("0x3").unwrap(), vec![0, 1]);
        assert_eq!(parse_core_mask("0x1").unwrap(), vec![0]);
        assert_eq!(parse_core_mask("f0").unwrap(), vec![4, 5, 6, 7]);
        assert_eq!(parse_core_mask("0x100").unwrap(), vec![8]);
        assert_eq!(parse_core_mask("[0,1]").unwrap(), vec![0, 1]);
        assert!(matches!(
            parse_core_mask("0x0"),
            Err(CoreSpecError::EmptyMask(_))
        ));
        assert!(matches!(
            parse_core_mask("0xg"),
            Err(CoreSpecError::BadMask(_))
        ));
        assert_eq!(parse_core_mask(""), Err(CoreSpecError::Empty));
    }

    #[test]
    fn lists() {
        assert_eq!(parse_core_list("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_core_list("1,0").unwrap(), vec![1, 0]);
        assert_eq!(parse_core_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_core_list("0,0"), Err(CoreSpecError::Duplicate(0)));
        assert!(matches!(
            parse_core_list("2-1"),
            Err(CoreSpecError::BadListEntry(_))
        ));
        assert!(matches!(
            parse_core_list("a"),
            Err(CoreSpecError::BadListEntry(_))
        ));
        assert_eq!(parse_cores("0x3").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("3").unwrap(), vec![3]);
        assert_eq!(parse_cores("[1]").unwrap(), vec![1]);
    }
}
