//! The TLS port's HTTP side on arbitrary bytes: the request head parser,
//! the credential (cookie and Authorization) and login-form parsing. Must
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hoard_server::fuzzing::http_request(data);
});
