//! The paper key: a key file printed as numbered lines of hex that a
//! person can type back, each line with its own check so a typo is
//! reported with its line number.
//!
//! ```text
//! hoard paper key 1a2b:3c4d:5e6f:7a8b:9c0d:1e2f:3a4b:5c6d
//! Passphrase: needed as well; this paper alone does not open the key.
//! Type the numbered lines back; spaces and case do not matter.
//!
//!  1: 7b22 6d61 6769 6322 3a22 686f 6172 642d 6b65 792d  efb3
//!  2: …
//! ```
//!
//! Line n carries bytes 20(n-1).. of the key file's compact JSON, as hex
//! in groups of 4 digits, then 4 hex digits of check: the first 2 bytes
//! of SHA-256(n as u32 LE || the line's bytes). Putting n in the check
//! catches swapped and mistyped line numbers too. Lines without a
//! leading number are text and ignored when read back.

use sha2::{Digest as _, Sha256};

use super::KeyFile;
use crate::error::{Error, Result};

pub const PAPER_TITLE: &str = "hoard paper key";
/// Bytes of the key file per line: 40 hex digits, 49 characters in groups.
pub const PAPER_BYTES_PER_LINE: usize = 20;

/// The printable paper copy of `file`.
pub fn paper(file: &KeyFile) -> String {
    let json = file.to_compact_json();
    let mut out = format!("{PAPER_TITLE} {}\n", file.fingerprint());
    out.push_str(if file.needs_passphrase() {
        "Passphrase: needed as well; this paper alone does not open the key.\n"
    } else {
        "Passphrase: none. Whoever holds this paper can read every backup made with this key.\n"
    });
    out.push_str("Type the numbered lines back; spaces and case do not matter.\n\n");
    let lines: Vec<&[u8]> = json.as_bytes().chunks(PAPER_BYTES_PER_LINE).collect();
    let width = lines.len().to_string().len();
    for (i, bytes) in lines.iter().enumerate() {
        let n = i + 1;
        let hex = hex::encode(bytes);
        let groups: Vec<&str> = hex
            .as_bytes()
            .chunks(4)
            .map(|g| std::str::from_utf8(g).expect("hex is ASCII"))
            .collect();
        out.push_str(&format!(
            "{n:>width$}: {}  {}\n",
            groups.join(" "),
            hex::encode(check(n, bytes))
        ));
    }
    out
}

/// The key file typed back from a paper copy. Blank lines and lines that
/// do not start with a number and ':' are ignored; spaces inside a line
/// and case do not matter. A line whose check does not match is
/// [`Error::PaperLine`] with its number.
pub fn from_paper(text: &str) -> Result<KeyFile> {
    if text.len() > 16 * super::MAX_KEY_FILE_SIZE {
        return Err(Error::Paper(format!(
            "text of {} bytes is far longer than any paper key",
            text.len()
        )));
    }
    let mut lines: Vec<Option<Vec<u8>>> = Vec::new();
    for raw in text.lines() {
        let Some((n, bytes)) = parse_line(raw)? else {
            continue;
        };
        if n > lines.len() {
            lines.resize(n, None);
        }
        if lines[n - 1].replace(bytes).is_some() {
            return Err(Error::PaperLine {
                line: n,
                reason: "given twice".into(),
            });
        }
    }
    if lines.is_empty() {
        return Err(Error::Paper("no numbered lines found".into()));
    }
    let mut json = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let l = l.as_ref().ok_or(Error::PaperLine {
            line: i + 1,
            reason: "missing".into(),
        })?;
        json.extend_from_slice(l);
    }
    KeyFile::parse(&json).map_err(|e| {
        Error::Paper(format!(
            "lines 1..={} are each correct but do not form a key file ({e}); \
             is a line missing at the end?",
            lines.len()
        ))
    })
}

/// A numbered line's number and bytes, `None` for a text line.
fn parse_line(raw: &str) -> Result<Option<(usize, Vec<u8>)>> {
    let Some((num, rest)) = raw.split_once(':') else {
        return Ok(None);
    };
    let num = num.trim();
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let bad = |line: usize, reason: String| Error::PaperLine { line, reason };
    let n: usize = match num.parse() {
        Ok(n) if (1..=10_000).contains(&n) => n,
        _ => return Err(bad(0, format!("line number {num} is out of range"))),
    };
    let digits: String = rest
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if let Some(c) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(bad(n, format!("{c:?} is not a hex digit")));
    }
    // At least one byte of data and the 4 check digits.
    if digits.len() < 6 || !digits.len().is_multiple_of(2) {
        return Err(bad(
            n,
            format!("{} hex digits: a digit missing or extra", digits.len()),
        ));
    }
    let (data, sum) = digits.split_at(digits.len() - 4);
    let bytes = hex::decode(data).expect("checked hex of even length");
    if hex::encode(check(n, &bytes)) != sum {
        return Err(bad(
            n,
            "check digits do not match: a typo in this line".into(),
        ));
    }
    Ok(Some((n, bytes)))
}

/// First 2 bytes of SHA-256(n as u32 LE || bytes).
fn check(n: usize, bytes: &[u8]) -> [u8; 2] {
    let mut h = Sha256::new();
    h.update((n as u32).to_le_bytes());
    h.update(bytes);
    let d = h.finalize();
    [d[0], d[1]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    use crate::keyfile::tests::FAST;

    #[test]
    fn round_trip() {
        let key = Key::generate();
        for pass in [None, Some("pw")] {
            let file = KeyFile::create(&key, pass, FAST).unwrap();
            let text = paper(&file);
            assert!(text.starts_with(&format!("hoard paper key {}\n", key.fingerprint())));
            let numbered = |l: &&str| l.trim_start().starts_with(|c: char| c.is_ascii_digit());
            for line in text.lines().filter(numbered) {
                let data = line.split_once(':').unwrap().1;
                let digits = data.chars().filter(|c| !c.is_whitespace()).count();
                assert!(digits <= 44, "{line}");
                assert!(line.len() <= 60, "{line}");
            }
            // Every key file starts `{"magic":"hoard-key-`: line 1 is
            // the doc's example, check digits included.
            assert!(
                text.contains("1: 7b22 6d61 6769 6322 3a22 686f 6172 642d 6b65 792d  efb3\n"),
                "{text}"
            );
            let back = from_paper(&text).unwrap();
            assert_eq!(back.to_json(), file.to_json());
            assert_eq!(back.unlock(pass).unwrap().fingerprint(), key.fingerprint());
            // Typed back sloppily: upper case, spaces moved, blank lines,
            // the text lines left out, lines in another order.
            let mut typed: Vec<String> = text
                .lines()
                .filter(numbered)
                .map(|l| format!("  {}  \n", l.to_uppercase().replacen(' ', "", 3)))
                .collect();
            typed.reverse();
            let typed = typed.join("\n");
            assert_eq!(from_paper(&typed).unwrap().to_json(), file.to_json());
        }
    }

    #[test]
    fn typos_are_reported_by_line() {
        let key = Key::from_secret(&[5; 32]);
        let file = KeyFile::create(&key, None, FAST).unwrap();
        let text = paper(&file);
        let lines: Vec<&str> = text.lines().collect();
        // Data lines start at index 4; change one digit of line 3.
        let target = lines[6];
        assert!(target.trim_start().starts_with("3:"), "{target}");
        let pos = target.find(": ").unwrap() + 3;
        let mut typo = target.to_string();
        let c = if &typo[pos..pos + 1] == "0" { "1" } else { "0" };
        typo.replace_range(pos..pos + 1, c);
        let bad = text.replace(target, &typo);
        match from_paper(&bad) {
            Err(Error::PaperLine { line: 3, reason }) => {
                assert!(reason.contains("typo"), "{reason}")
            }
            r => panic!("{r:?}"),
        }
        // A letter that is not hex.
        let mut typo = target.to_string();
        typo.replace_range(pos..pos + 1, "o");
        assert!(matches!(
            from_paper(&text.replace(target, &typo)),
            Err(Error::PaperLine { line: 3, .. })
        ));
        // A line left out, or the last one.
        assert!(matches!(
            from_paper(&text.replace(target, "")),
            Err(Error::PaperLine { line: 3, .. })
        ));
        let last = lines.last().unwrap();
        assert!(matches!(
            from_paper(&text.replace(last, "")),
            Err(Error::Paper(_))
        ));
        // A line given the wrong number: the number is in the check.
        let renumbered = lines[4].replacen('1', "3", 1);
        assert!(matches!(
            from_paper(&text.replace(lines[4], &renumbered)),
            Err(Error::PaperLine { line: 3, .. })
        ));
        assert!(matches!(from_paper("nothing here"), Err(Error::Paper(_))));
    }
}
