//! Which tasks this process is deciding again in full (after a settings change or a new
//! model version). Their examples are marked dirty for crash recovery, and the recovery
//! sweep would otherwise take the same examples in parallel, doing the work twice and
//! recording "recovery" as the trigger; it leaves these tasks to the pass that owns them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Tasks under a full re-decision, counted (two passes on one task may overlap).
#[derive(Default, Clone)]
pub struct Rescoring(Arc<Mutex<HashMap<i64, usize>>>);

/// Held while a pass runs; dropping it, on success, error or cancellation, frees the task.
pub struct RescoringGuard {
    tasks: Rescoring,
    task_id: i64,
}

impl Rescoring {
    pub fn start(&self, task_id: i64) -> RescoringGuard {
        *self.lock().entry(task_id).or_default() += 1;
        RescoringGuard {
            tasks: self.clone(),
            task_id,
        }
    }

    pub fn contains(&self, task_id: i64) -> bool {
        self.lock().contains_key(&task_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, usize>> {
        // The map holds plain counts, still right after a holder panicked.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for RescoringGuard {
    fn drop(&mut self) {
        let mut tasks = self.tasks.lock();
        if let Some(n) = tasks.get_mut(&self.task_id) {
            *n -= 1;
            if *n == 0 {
                tasks.remove(&self.task_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_held_until_its_last_pass_ends() {
        let r = Rescoring::default();
        let a = r.start(7);
        let b = r.start(7);
        assert!(r.contains(7) && !r.contains(8));
        drop(a);
        assert!(r.contains(7), "the second pass still runs");
        drop(b);
        assert!(!r.contains(7));
    }
}
