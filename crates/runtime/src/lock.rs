//! A mutex a panic elsewhere does not leave unusable.

use std::sync::{Mutex, MutexGuard};

/// A [`Mutex`] whose poison is recovered rather than unwrapped: for maps and caches that are
/// valid at every step, a reconcile that panicked while holding one must not stop every other
/// reconcile from using it.
#[derive(Debug, Default)]
pub struct Lock<T>(Mutex<T>);

impl<T> Lock<T> {
    /// A lock around `value`.
    pub const fn new(value: T) -> Self {
        Self(Mutex::new(value))
    }

    /// Waits for the lock and takes it, poisoned or not.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_locked_leaves_the_value_usable() {
        let lock = std::sync::Arc::new(Lock::new(vec![1]));
        let held = lock.clone();
        let panicked = std::thread::spawn(move || {
            let mut guard = held.lock();
            guard.push(2);
            panic!("while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(*lock.lock(), [1, 2]);
    }
}
