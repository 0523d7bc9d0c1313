//! An S3-compatible server on 127.0.0.1 serving the folders under ROOT as buckets — the one
//! the tests start in process (`tests/it/s3.rs`), as a program for benchmarks
//! (`benches/s3_w1.sh`). Prints `http://127.0.0.1:PORT`, then serves until killed; on each
//! line read from stdin prints the GET body bytes served so far per bucket.
//!
//! `cargo run --release --example s3_server -- ROOT` (credentials: `tests/it/s3.rs`).

#[allow(dead_code)]
#[path = "../tests/it/s3.rs"]
mod s3;

fn main() {
    let root = std::env::args().nth(1).expect("usage: s3_server ROOT");
    let server = s3::serve(std::path::PathBuf::from(root));
    println!("http://{}", server.addr);
    for line in std::io::stdin().lines() {
        if line.is_err() {
            break;
        }
        println!("{}", server.served_report());
    }
    // stdin closed: keep serving until killed
    loop {
        std::thread::park();
    }
}
