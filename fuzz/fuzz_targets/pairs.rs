//! Pairs parsing: arbitrary bytes never panic, and whatever parses re-encodes to a map that
//! parses to the same pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmux::abi::pairs;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = pairs::decode(data) {
        let again = pairs::encode(&parsed);
        assert_eq!(pairs::decode(&again).as_ref(), Ok(&parsed));
    }
});
