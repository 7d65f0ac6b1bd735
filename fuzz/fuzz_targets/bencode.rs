//! Bencode: the decoders agree with each other and with the encoder.
//!
//! Input: one byte choosing the limits (depth, length, sorted keys), then the
//! document. Properties: anything accepted re-encodes to exactly the input (the
//! decoder keeps input order and parses integers and lengths strictly, so nothing
//! is normalised away); `decode_prefix`, `value_len` and `decode` agree on where a
//! value ends and on every error; a strict prefix of a value is "need more", never
//! a value or an error; `find_raw` returns the bytes of the value `get` returns;
//! the owned, sorted form is canonical and decodes under `require_sorted_keys`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reactor_bittorrent::bencode::{self, DecodeOptions, Value};

fn depth(v: &Value<'_>) -> usize {
    match v {
        Value::Int(_) | Value::Bytes(_) => 0,
        Value::List(l) => 1 + l.iter().map(depth).max().unwrap_or(0),
        Value::Dict(d) => 1 + d.iter().map(|(_, v)| depth(v)).max().unwrap_or(0),
    }
}

fn encoded(v: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    bencode::encode(v, &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let opts = DecodeOptions {
        max_depth: [64, 3, 1, 0][usize::from(sel & 3)],
        max_len: [bencode::DEFAULT_MAX_LEN, 64, 7, 0][usize::from((sel >> 2) & 3)],
        require_sorted_keys: sel & 0x10 != 0,
    };

    let whole = bencode::decode_with(input, &opts);
    let prefix = bencode::decode_prefix_with(input, &opts);
    let len = bencode::value_len(input, &opts);

    // The three entry points share one grammar: same end, same error.
    match (&prefix, &len) {
        (Ok(Some((_, n))), Ok(Some(m))) => assert_eq!(n, m),
        (Ok(None), Ok(None)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        other => panic!("decode_prefix and value_len disagree: {other:?}"),
    }

    if let Ok(v) = &whole {
        assert_eq!(encoded(v), input, "accepted input must re-encode to itself");
        assert!(input.len() <= opts.max_len);
        assert!(depth(v) <= opts.max_depth);
        // A whole value is also a prefix that spans the input.
        let (pv, n) = prefix.clone().unwrap().unwrap();
        assert_eq!((&pv, n), (v, input.len()));

        // Canonical form: sorted, duplicate keys collapsed to the first.
        let owned = v.to_owned_value();
        let canon = owned.to_bytes();
        let sorted = DecodeOptions {
            require_sorted_keys: true,
            max_len: usize::MAX,
            max_depth: usize::MAX,
        };
        let back = bencode::decode_with(&canon, &sorted).expect("canonical form decodes");
        assert_eq!(back.to_owned_value(), owned);
        if opts.require_sorted_keys {
            assert_eq!(canon, input, "sorted input is already canonical");
        }

        // find_raw sees the top-level dictionary exactly as get does.
        if let Value::Dict(entries) = v {
            for (k, _) in entries.iter().take(16) {
                let raw = bencode::find_raw_with(input, k, &opts).expect("dict accepted");
                let want = v.get(k).map(encoded);
                assert_eq!(raw.map(<[u8]>::to_vec), want);
            }
            let absent = bencode::find_raw_with(input, b"\xff\xfe absent", &opts).unwrap();
            assert_eq!(absent.is_some(), v.get(b"\xff\xfe absent").is_some());
        }
    } else if input.first() == Some(&b'd') && opts.max_depth > 0 {
        // find_raw validates the whole input: it must refuse what decode refused.
        assert!(bencode::find_raw_with(input, b"info", &opts).is_err());
    }

    if let Ok(Some((v, n))) = &prefix {
        let value = &input[..*n];
        assert_eq!(&encoded(v), value);
        // Strict prefixes of a value only ever ask for more.
        for cut in [0, n / 2, n.saturating_sub(1)] {
            if cut < *n {
                assert_eq!(
                    bencode::value_len(&value[..cut], &opts),
                    Ok(None),
                    "cut {cut}"
                );
            }
        }
    }
});
