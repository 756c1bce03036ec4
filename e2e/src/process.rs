//! Helper programs (controllers, Toxiproxy, Prometheus) started as child processes.

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// A child process killed (SIGKILL) and reaped when dropped, so that a helper program never
/// outlives the test or benchmark that started it.
#[derive(Debug)]
pub struct KilledOnDrop(Child);

impl KilledOnDrop {
    /// Guards `child`.
    pub fn new(child: Child) -> Self {
        KilledOnDrop(child)
    }
}

impl From<Child> for KilledOnDrop {
    fn from(child: Child) -> Self {
        KilledOnDrop(child)
    }
}

impl Deref for KilledOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KilledOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        // Killing an exited but unreaped process is harmless; `wait` reaps it either way.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
