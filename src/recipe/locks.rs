//! Instrument ownership: an instrument belongs to one run at a time.
//!
//! A second run that needs a held instrument is refused with a message naming the holder, before
//! it touches anything, or, if it asks to, waits in line until the instruments are free.
//! Background polls do not take locks: they keep reading between a run's
//! requests (the link task serializes them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instrument `{instrument}` is in use by {holder}")]
pub struct Busy {
    pub instrument: String,
    pub holder: String,
}

/// The instruments held by runs, shared by everything that starts runs in one process.
#[derive(Debug, Clone, Default)]
pub struct Locks {
    held: Arc<Mutex<BTreeMap<String, String>>>,
    released: Arc<tokio::sync::Notify>,
}

/// Releases its instruments when dropped.
#[derive(Debug)]
pub struct Guard {
    locks: Locks,
    ids: Vec<String>,
}

impl Locks {
    pub fn new() -> Locks {
        Locks::default()
    }

    /// Take every instrument in `ids` for `holder`, or none of them.
    pub fn try_acquire(&self, ids: &[String], holder: &str) -> Result<Guard, Busy> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, h)) = ids.iter().find_map(|id| held.get(id).map(|h| (id, h))) {
            return Err(Busy {
                instrument: id.clone(),
                holder: h.clone(),
            });
        }
        for id in ids {
            held.insert(id.clone(), holder.to_string());
        }
        Ok(Guard {
            locks: self.clone(),
            ids: ids.to_vec(),
        })
    }

    /// Take every instrument in `ids`, waiting for their holders to finish. Gives up with the
    /// current holder when `give_up` is cancelled first.
    pub async fn acquire(
        &self,
        ids: &[String],
        holder: &str,
        give_up: &tokio_util::sync::CancellationToken,
    ) -> Result<Guard, Busy> {
        loop {
            // Registered before trying, so a release between the try and the wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let busy = match self.try_acquire(ids, holder) {
                Ok(g) => return Ok(g),
                Err(b) => b,
            };
            tokio::select! {
                _ = &mut released => {}
                _ = give_up.cancelled() => return Err(busy),
            }
        }
    }

    /// Who holds `id`, if anyone.
    pub fn holder(&self, id: &str) -> Option<String> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(id).cloned()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        for id in &self.ids {
            held.remove(id);
        }
        drop(held);
        self.locks.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_or_nothing_and_released_on_drop() {
        let locks = Locks::new();
        let a = locks
            .try_acquire(&["pa1".into(), "src1".into()], "run 1")
            .unwrap();
        let err = locks
            .try_acquire(&["sphere1".into(), "src1".into()], "run 2")
            .unwrap_err();
        assert_eq!(err.to_string(), "instrument `src1` is in use by run 1");
        assert_eq!(locks.holder("sphere1"), None, "nothing taken on refusal");
        drop(a);
        assert!(locks.try_acquire(&["src1".into()], "run 2").is_ok());
    }
}
