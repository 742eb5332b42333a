//! How a caller follows and stops a long computation: progress after each module, and a cancel
//! flag the engine checks before each module and inside every loop whose length a request sets
//! (each ZipLoRA step, LoRA-LEGO iteration, joint-compression iteration), so a stop takes effect
//! within one step of one module; nothing is written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::MergeError;

/// A cancel flag shared between the caller and the engine.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Progress callback `(done, total)` and cancel flag of one run.
pub struct Control<'a> {
    progress: &'a (dyn Fn(usize, usize) + Sync),
    cancel: Option<&'a CancelToken>,
}

impl<'a> Control<'a> {
    pub fn new(progress: &'a (dyn Fn(usize, usize) + Sync), cancel: &'a CancelToken) -> Self {
        Self {
            progress,
            cancel: Some(cancel),
        }
    }

    /// Progress only; never cancelled.
    pub fn progress(progress: &'a (dyn Fn(usize, usize) + Sync)) -> Self {
        Self {
            progress,
            cancel: None,
        }
    }

    /// Neither progress nor cancellation.
    pub fn none() -> Control<'static> {
        Control {
            progress: &|_, _| {},
            cancel: None,
        }
    }

    /// `Err(Cancelled)` once the caller has asked to stop.
    pub fn check(&self) -> Result<(), MergeError> {
        match self.cancel {
            Some(c) if c.is_cancelled() => Err(MergeError::Cancelled),
            _ => Ok(()),
        }
    }

    pub fn report(&self, done: usize, total: usize) {
        (self.progress)(done, total);
    }
}
