//! The TLS port's HTTP side on arbitrary bytes: the request head parser,
//! the credential (cookie and Authorization) and login-form parsing, and
//! what the API parses before any datastore work (session cookies, bearer
//! tokens, archive paths, JSON request bodies). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hoard_server::fuzzing::http_request(data);
});
