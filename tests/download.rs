//! Downloads against a local HTTP server this test starts on 127.0.0.1
//! (bounded: it serves the requests the test makes, then stops): progress
//! reported, a checksum mismatch rejected, an interrupted transfer, and in
//! neither failure a file left in the cache folder.
#![cfg(feature = "download")]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

/// Serves one response per entry of `bodies` (its bytes, and the length it
/// claims), then returns. Each request is read up to its blank line.
fn serve(bodies: Vec<(Vec<u8>, usize)>) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/model.bin", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        for (body, claimed) in bodies {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            // Dropping the stream closes it, mid-body when claimed > body.len().
        }
    });
    (url, handle)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn downloads_are_checked_and_never_leave_partial_files() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let good = sha256_hex(&body);
    let (url, server) = serve(vec![
        (body.clone(), body.len()),
        (body.clone(), body.len()),
        (body[..1000].to_vec(), body.len()),
    ]);
    let dir = common::scratch("download");
    let dest = dir.join("model.bin");

    // Whole and matching: in place, progress reported up to the total.
    let mut seen = Vec::new();
    kvgpu::files::download(&url, &good, &dest, |done, total| seen.push((done, total))).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(seen.first(), Some(&(0, Some(body.len() as u64))));
    assert_eq!(
        seen.last(),
        Some(&(body.len() as u64, Some(body.len() as u64)))
    );
    assert!(seen.len() > 2, "progress as it arrives: {seen:?}");
    std::fs::remove_file(&dest).unwrap();

    // A checksum mismatch: rejected, and nothing left.
    let wrong = "0".repeat(64);
    let err = kvgpu::files::download(&url, &wrong, &dest, |_, _| {}).unwrap_err();
    assert!(
        matches!(&err, kvgpu::Error::ChecksumMismatch { found, .. } if *found == good),
        "{err}"
    );
    assert!(
        files_in(&dir).is_empty(),
        "left behind: {:?}",
        files_in(&dir)
    );

    // The connection drops after 1000 of 300000 bytes: an error, and nothing left.
    let err = kvgpu::files::download(&url, &good, &dest, |_, _| {}).unwrap_err();
    assert!(matches!(err, kvgpu::Error::Download { .. }), "{err}");
    assert!(
        files_in(&dir).is_empty(),
        "left behind: {:?}",
        files_in(&dir)
    );
    server.join().unwrap();

    // Nobody listening: a clear error naming the address.
    let err = kvgpu::files::download(&url, &good, &dest, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
    assert!(files_in(&dir).is_empty());
}
