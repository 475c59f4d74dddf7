//! Hostile values: the strategies that make nasty text, numbers and page tokens, and
//! valid values to mutate.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use proptest::{
    prelude::*,
    sample::{Index, select},
};

use crate::common::ADMIN;

/// Pieces of nasty text: NUL and other control characters, bidi overrides, zero-width
/// and combining characters, noncharacters and U+FFFD, characters next to the
/// surrogate range, lookalikes of overlong encodings and of ASCII, case-folding
/// traps, SQL, templates and paths.
pub(super) const NASTY: &[&str] = &[
    "\0",
    "\0\0\0",
    "\u{1}",
    "\u{7}",
    "\u{8}",
    "\t",
    "\n",
    "\r\n",
    "\u{1b}[31m",
    "\u{7f}",
    "\u{85}",
    "\u{9b}",
    "\u{a0}",
    "\u{200b}",
    "\u{200d}",
    "\u{200e}",
    "\u{200f}",
    "\u{202e}",
    "\u{2066}",
    "\u{2028}",
    "\u{feff}",
    "\u{fffd}",
    "\u{fffe}",
    "\u{ffff}",
    "\u{fdd0}",
    "\u{d7ff}",
    "\u{e000}",
    "\u{10ffff}",
    "e\u{301}",
    "\u{301}",
    "\u{1f600}",
    "\u{1f469}\u{200d}\u{1f4bb}",
    "\u{c0}\u{af}",
    "\u{e0}\u{80}\u{af}",
    "\u{ff0f}",
    "\u{2215}",
    "\u{2024}",
    "\u{ff0e}",
    "\u{ff41}",
    "\u{130}",
    "\u{131}",
    "\u{17f}",
    "\u{212a}",
    "\u{391}",
    " ",
    "'",
    "\"",
    "`",
    "\\",
    "/",
    "../",
    "%",
    "%00",
    "_",
    "*",
    "' OR '1'='1",
    "'; DROP TABLE users; --",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "<script>",
    "kms_",
    "kmsr_",
    "Bearer ",
    "v1:",
    "admin",
    "root",
];

pub(super) fn atom() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(NASTY).prop_map(str::to_owned),
        4 => "[A-Za-z0-9._@-]{0,8}",
        2 => any::<char>().prop_map(String::from),
        1 => proptest::char::range('\0', '\u{1f}').prop_map(String::from),
    ]
}

/// Nasty pieces and plain ones, glued together.
pub(super) fn mixed() -> impl Strategy<Value = String> {
    proptest::collection::vec(atom(), 0..10).prop_map(|parts| parts.concat())
}

/// Long runs of one unit: around every length limit, and far past them (but mostly
/// under the message size limit; the oracle expects OUT_OF_RANGE above it).
pub(super) fn huge() -> impl Strategy<Value = String> {
    const UNITS: &[&str] = &[
        "a",
        "Z",
        "\u{e9}",
        "\0",
        "\u{1f600}",
        "e\u{301}",
        "kms_",
        " ",
    ];
    const LENS: &[usize] = &[
        11, 12, 13, 31, 32, 33, 63, 64, 65, 255, 256, 257, 1023, 1024, 1025, 4096, 16_000,
    ];
    (select(UNITS), select(LENS)).prop_map(|(unit, n)| unit.repeat(n))
}

/// A valid value with something nasty inserted somewhere.
pub(super) fn near(valid: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (valid, atom(), any::<Index>()).prop_map(|(s, bad, at)| {
        let chars: Vec<char> = s.chars().collect();
        let at = at.index(chars.len() + 1);
        let mut out: String = chars[..at].iter().collect();
        out.push_str(&bad);
        out.extend(&chars[at..]);
        out
    })
}

/// Valid values (a share of the cases must reach the database) and hostile ones.
pub(super) fn hostile<S>(valid: impl Fn() -> S) -> impl Strategy<Value = String>
where
    S: Strategy<Value = String> + 'static,
{
    prop_oneof![
        3 => valid(),
        4 => mixed(),
        1 => huge(),
        1 => any::<String>(),
        2 => near(valid()),
    ]
}

pub(super) fn valid_service_name() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "svc-a", "svc.b", "Z_9", "nope", "a", "new-key", "..", "-", "_"
            ][..]
        )
        .prop_map(str::to_owned),
        "[A-Za-z0-9._-]{1,64}",
    ]
}

/// Usernames, never the admin's own (a case must not take the admin role away from
/// the token the other cases use).
pub(super) fn valid_username() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&["alice", "bob", "nobody", "x@y.z", "carol", "@"][..]).prop_map(str::to_owned),
        "[A-Za-z0-9._@-]{1,64}",
    ]
}

pub(super) fn not_admin(s: &String) -> bool {
    s != ADMIN
}

pub(super) fn valid_role() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&["user", "admin", "auditor", "ops_team-2"][..]).prop_map(str::to_owned),
        "[a-z0-9_-]{1,32}",
    ]
}

pub(super) fn valid_password() -> impl Strategy<Value = String> {
    "[ -~]{12,40}"
}

pub(super) fn roles() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(hostile(valid_role), 0..4)
}

pub(super) fn wild_i64(edges: &'static [i64]) -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => select(edges),
        2 => any::<i64>(),
        1 => -5i64..5,
    ]
}

pub(super) const TTL_EDGES: &[i64] = &[
    0,
    -1,
    1,
    3600,
    kms::domain::validate::TTL_MAX_SECONDS,
    kms::domain::validate::TTL_MAX_SECONDS + 1,
    i64::MAX,
    i64::MIN,
    i64::MAX / 1000,
];

pub(super) const GRACE_EDGES: &[i64] = &[0, -1, 1, 2_592_000, 2_592_001, i64::MAX, i64::MIN];

pub(super) fn page_size() -> impl Strategy<Value = i32> {
    prop_oneof![
        3 => select(&[i32::MIN, -1, 0, 1, 2, 1000, 1001, i32::MAX][..]),
        2 => any::<i32>(),
        1 => -3i32..60,
    ]
}

/// Page tokens: well-formed ones naming valid and hostile rows, other versions,
/// bytes that are not UTF-8, truncations, and text that is not base64url at all.
pub(super) fn page_token(
    valid_last: fn() -> BoxedStrategy<String>,
) -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        3 => valid_last().prop_map(|last| URL_SAFE_NO_PAD.encode(format!("v1:{last}"))),
        2 => hostile(valid_last).prop_map(|last| URL_SAFE_NO_PAD.encode(format!("v1:{last}"))),
        1 => (select(&["v2:", "", "V1:", "v1", " v1:", "v1:v1:"][..]), valid_last())
            .prop_map(|(v, last)| URL_SAFE_NO_PAD.encode(format!("{v}{last}"))),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        1 => (valid_last(), any::<Index>()).prop_map(|(last, cut)| {
            let t = URL_SAFE_NO_PAD.encode(format!("v1:{last}"));
            t[..cut.index(t.len() + 1)].to_owned()
        }),
        1 => valid_last().prop_map(|last| STANDARD.encode(format!("v1:{last}"))),
        2 => mixed(),
    ]
}

pub(super) fn boxed_service_name() -> BoxedStrategy<String> {
    valid_service_name().boxed()
}

pub(super) fn boxed_username() -> BoxedStrategy<String> {
    valid_username().boxed()
}

pub(super) fn boxed_audit_id() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        select(&["0", "-1", "+5", "007", "9223372036854775808", "1e3", " 1"][..])
            .prop_map(str::to_owned),
    ]
    .boxed()
}

pub(super) fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let seconds = prop_oneof![
        3 => select(&[
            0,
            -1,
            -62_135_596_800,
            -62_135_596_801,
            253_402_300_799,
            253_402_300_800,
            8_210_298_412_799,
            8_210_298_412_800,
            -8_334_632_851_200,
            -8_334_632_851_201,
            i64::MIN,
            i64::MAX,
            1_800_000_000,
        ][..]),
        2 => any::<i64>(),
    ];
    let nanos = prop_oneof![
        3 => Just(0),
        1 => select(&[-1, 999_999_999, 1_000_000_000, i32::MIN, i32::MAX][..]),
        1 => any::<i32>(),
    ];
    proptest::option::of(
        (seconds, nanos).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

/// Mutations of a good token or key: truncation, a replaced, inserted or deleted
/// character, swapped or repeated segments.
pub(super) fn mutated(good: String) -> impl Strategy<Value = String> {
    let edit = (
        0u8..7,
        any::<Index>(),
        any::<Index>(),
        select(&b"Aa0_-.=+/ \0"[..]),
    );
    proptest::collection::vec(edit, 1..4).prop_map(move |edits| {
        let mut s = good.clone().into_bytes();
        for (op, i, j, byte) in edits {
            let at = i.index(s.len() + 1);
            match op {
                0 => s.truncate(at),
                1 if at < s.len() => s[at] = if s[at] == byte { b'x' } else { byte },
                2 => s.insert(at, byte),
                3 if at < s.len() => {
                    s.remove(at);
                }
                4 => {
                    let text = String::from_utf8_lossy(&s).into_owned();
                    let mut parts: Vec<&str> = text.split('.').collect();
                    let n = parts.len();
                    parts.swap(i.index(n), j.index(n));
                    s = parts.join(".").into_bytes();
                }
                5 => {
                    let text = String::from_utf8_lossy(&s).into_owned();
                    let parts: Vec<&str> = text.split('.').collect();
                    let part = parts[i.index(parts.len())];
                    s = format!("{text}.{part}").into_bytes();
                }
                _ => s.extend_from_slice(b".."),
            }
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}
