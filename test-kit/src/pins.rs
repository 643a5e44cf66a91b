//! A private bpffs pin directory per test, removed on drop (which detaches what it pinned).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

pub struct TestPins {
    path: PathBuf,
}

impl TestPins {
    pub fn new() -> TestPins {
        crate::root::require_root();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/mxguard-test-{}-{id}",
            std::process::id()
        ));
        filter_user::links::PinDir::new(&path)
            .ensure_bpffs()
            .expect("bpffs on /sys/fs/bpf");
        TestPins { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().expect("UTF-8 pin path")
    }
}

impl Default for TestPins {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
