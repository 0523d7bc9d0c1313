//! A registry writer killed with SIGKILL loses no version it acknowledged, and what it was
//! writing is either whole or absent; the store also waits for a process holding its lock.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use quiver_core::hash::hash_bytes;
use quiver_registry::{DatasetKind, DatasetVersion, Operation, Registry, Storage};

fn version(n: u64) -> DatasetVersion {
    DatasetVersion {
        name: "d".into(),
        version: 0,
        kind: DatasetKind::Spine,
        hash: hash_bytes(&n.to_le_bytes()),
        state: Default::default(),
        schema: vec![("x".into(), "int".into())],
        created_micros: n as i64,
        storage: Storage::File {
            path: format!("f{n}"),
        },
        op: Operation::Add {
            file: format!("f{n}"),
        },
    }
}

/// The child of `kill_minus_nine_loses_nothing_acknowledged`: records versions forever.
#[test]
#[ignore = "run by kill_minus_nine_loses_nothing_acknowledged as a child process"]
fn crash_child_registry_writer() {
    let Some(dir) = std::env::var_os("QUIVER_REGISTRY_CRASH_DIR") else {
        return;
    };
    let reg = Registry::open(dir).unwrap();
    for n in 1u64.. {
        let v = reg.add_dataset_version(version(n)).unwrap();
        println!("acked {}", v.version);
    }
}

#[test]
fn kill_minus_nine_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child_registry_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("QUIVER_REGISTRY_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acked = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if let Some(n) = line.unwrap().strip_prefix("acked ") {
            acked = n.trim().parse().unwrap();
            if acked >= 40 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(acked >= 40);
    // The lock is released with the process; every acknowledged version is there, whole.
    let reg = Registry::open(dir.path()).unwrap();
    let all = reg.dataset_versions("d").unwrap();
    assert!(all.len() as u64 >= acked, "{} < {acked}", all.len());
    for (i, v) in all.iter().enumerate() {
        assert_eq!(v.version, i as u64 + 1);
        assert_eq!(v.hash, hash_bytes(&v.version.to_le_bytes()));
    }
    // And it keeps numbering after them.
    let next = reg
        .add_dataset_version(version(all.len() as u64 + 1))
        .unwrap();
    assert_eq!(next.version, all.len() as u64 + 1);
}

#[test]
fn a_second_opener_waits_for_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = Registry::open(dir.path()).unwrap();
    let path = dir.path().to_path_buf();
    let waiter = std::thread::spawn(move || {
        // sled's lock is per process, so a second process is needed to see the wait.
        Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "open_child", "--nocapture"])
            .env("QUIVER_REGISTRY_OPEN_DIR", &path)
            .output()
            .unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    first.add_dataset_version(version(1)).unwrap();
    drop(first);
    let out = waiter.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("saw 1 version"));
}

#[test]
#[ignore = "run by a_second_opener_waits_for_the_first as a child process"]
fn open_child() {
    let Some(dir) = std::env::var_os("QUIVER_REGISTRY_OPEN_DIR") else {
        return;
    };
    let reg = Registry::open(dir).unwrap();
    println!("saw {} version", reg.dataset_versions("d").unwrap().len());
}
