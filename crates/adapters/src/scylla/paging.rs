//! Page tokens: base64url of a version, the listing kind, a fingerprint of the query, the
//! current bucket and the driver's paging state in it (for things: the last name listed). A
//! token that does not decode, or was issued for another listing or query, is refused with
//! [`crate::invalid_page_token`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetcmd_domain::ports::PortResult;

use crate::invalid_page_token;

const TOKEN_VERSION: &str = "s1";
pub(super) const EXECUTION_TOKEN: &str = "e";
pub(super) const COMMAND_TOKEN: &str = "c";
/// Thing listings resume after a name, kept where the paging state is.
pub(super) const THING_TOKEN: &str = "t";
pub(super) const GROUP_TOKEN: &str = "g";

/// FNV-1a: a hash that is the same in every build, so tokens survive rolling upgrades.
pub(super) fn fingerprint(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Where a listing resumes: a bucket (0 for commands) and the driver's paging state in it
/// (`None`: the bucket's start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cursor {
    pub(super) bucket: i64,
    pub(super) state: Option<Vec<u8>>,
}

pub(super) fn encode_token(kind: &str, fp: u64, c: &Cursor) -> String {
    let state = c
        .state
        .as_deref()
        .map(|s| URL_SAFE_NO_PAD.encode(s))
        .unwrap_or_default();
    URL_SAFE_NO_PAD.encode(format!(
        "{TOKEN_VERSION}|{kind}|{fp:016x}|{}|{state}",
        c.bucket
    ))
}

pub(super) fn decode_token(kind: &str, fp: u64, token: &str) -> PortResult<Cursor> {
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid_page_token("not base64url"))?;
    let text = String::from_utf8(raw).map_err(|_| invalid_page_token("not UTF-8"))?;
    let parts: Vec<&str> = text.split('|').collect();
    let [version, k, f, bucket, state] = parts.as_slice() else {
        return Err(invalid_page_token("missing fields"));
    };
    if *version != TOKEN_VERSION {
        return Err(invalid_page_token("unknown version"));
    }
    if *k != kind {
        return Err(invalid_page_token("issued for another listing"));
    }
    if u64::from_str_radix(f, 16).ok() != Some(fp) {
        return Err(invalid_page_token("issued for another query"));
    }
    let bucket = bucket
        .parse::<i64>()
        .map_err(|_| invalid_page_token("bad bucket"))?;
    let state = if state.is_empty() {
        None
    } else {
        Some(
            URL_SAFE_NO_PAD
                .decode(state)
                .map_err(|_| invalid_page_token("bad paging state"))?,
        )
    };
    Ok(Cursor { bucket, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let c = Cursor {
            bucket: -3_600_000,
            state: Some(vec![0, 1, 2, 255]),
        };
        let t = encode_token(EXECUTION_TOKEN, 42, &c);
        assert_eq!(decode_token(EXECUTION_TOKEN, 42, &t), Ok(c.clone()));
        let start = Cursor {
            bucket: 7,
            state: None,
        };
        let t2 = encode_token(EXECUTION_TOKEN, 1, &start);
        assert_eq!(decode_token(EXECUTION_TOKEN, 1, &t2), Ok(start));
        for (kind, fp, token) in [
            (COMMAND_TOKEN, 42, t.as_str()),
            (EXECUTION_TOKEN, 43, t.as_str()),
            (EXECUTION_TOKEN, 42, "not a token!"),
            (EXECUTION_TOKEN, 42, ""),
            (EXECUTION_TOKEN, 42, "Zm9v"),
        ] {
            let err = decode_token(kind, fp, token).expect_err(token);
            assert!(crate::is_invalid_page_token(&err), "{token}: {err}");
        }
    }
}
