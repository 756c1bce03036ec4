//! Waiting on a real system: poll with a deadline, never sleep and hope.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a test waits for something the control plane or a controller should do.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Duration);

impl Default for Deadline {
    fn default() -> Self {
        Deadline(Duration::from_secs(30))
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` and the last
/// observation after `deadline`.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Deadline, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::from("not checked yet");
    while start.elapsed() < deadline.0 {
        match check().await {
            Ok(value) => return value,
            Err(observed) => last = observed,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out after {:?} waiting for {what}; last observed: {last}",
        deadline.0
    );
}
