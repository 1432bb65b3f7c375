//! Catching a phase's panic: a `PhaseRunner` is code the queue does not know, and a
//! panic inside it must end its claim like a transient error (the job runs again, the
//! run counted) instead of unwinding through the task that holds the claim.
//!
//! Must not touch: how the claim then ends (the executor and the completer decide).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::Poll;

/// Runs `future` to its end; `Err` holds the message of a panic raised while it was
/// polled (it is not polled again). The future is built inside the first poll by the
/// caller's `async` block, so a panic in the call that makes it is caught too.
pub(crate) async fn catch_panic<F: Future>(future: F) -> Result<F::Output, String> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |cx| {
        // Unwind safety: a future that panicked is dropped, never polled again, and
        // shares no state with the caller that the panic could leave half-written.
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    })
    .await
}

/// The text a panic was raised with (`panic!("…")` carries a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_its_message() {
        assert_eq!(catch_panic(async { 7 }).await, Ok(7));
        let n = 3;
        let caught = catch_panic(async move {
            tokio::task::yield_now().await;
            panic!("item {n} tripped");
        })
        .await;
        assert_eq!(caught, Err::<(), _>("item 3 tripped".to_owned()));
    }
}
