//! The saved-cache reader from arbitrary bytes: errors are fine, panics and
//! huge allocations are not; what parses serializes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = kvgpu::snapshot::Snapshot::from_bytes(data) {
        assert_eq!(s.to_bytes(), data);
    }
});
