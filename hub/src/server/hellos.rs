//! Hellos of many spokes written together: a reconnect storm commits a few transactions, not one per spoke.
//!
//! A writer task takes every hello that is waiting, records them in one [`Store::hellos`] call, and answers each;
//! hellos that arrive while it writes go into the next call. An idle hub writes a lone hello at once, so no hello
//! waits longer than the write before it (group commit, without a timer).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::server::state::Hub;
use crate::server::store::{Hello, Registration, Store};

/// At most this many hellos in one transaction.
const BATCH: usize = 1024;

type Answer = Result<Option<Registration>, Status>;

/// The way into the writer task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Hellos {
    queue: mpsc::UnboundedSender<(Hello, oneshot::Sender<Answer>)>,
}

impl Hellos {
    /// Starts the writer task on `hub`'s store; it ends when every `Hellos` is dropped.
    pub fn start<S: Store>(hub: Arc<Hub<S>>) -> Self {
        let (queue, mut waiting) = mpsc::unbounded_channel::<(Hello, oneshot::Sender<Answer>)>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while waiting.recv_many(&mut batch, BATCH).await > 0 {
                let (hellos, answers): (Vec<Hello>, Vec<oneshot::Sender<Answer>>) = batch.drain(..).unzip();
                let now = tollgate_process::unix_millis();
                match hub.store().hellos(&hellos, now).await {
                    Ok(registrations) => {
                        for (answer, registration) in answers.into_iter().zip(registrations) {
                            let _ = answer.send(Ok(registration));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(
                            error = %tollgate_process::error_chain(&error),
                            hellos = hellos.len(),
                            "Could not record hellos"
                        );
                        let status = Status::from(error);
                        for answer in answers {
                            let _ = answer.send(Err(status.clone()));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Records a spoke's hello with the others waiting, and returns its registration (`None`: not registered).
    pub async fn hello(&self, hello: Hello) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send((hello, answer))
            .map_err(|_| Status::unavailable("the hub is stopping"))?;
        answered.await.map_err(|_| Status::unavailable("the hub is stopping"))?
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::server::store::SqliteStore;

    #[tokio::test]
    async fn concurrent_hellos_are_answered_each_with_its_own_registration() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        for i in 0..50 {
            store
                .register_cluster(&format!("c{i}"), &BTreeMap::from([("n".to_string(), i.to_string())]), 1)
                .await
                .unwrap();
        }
        let hub = Arc::new(Hub::new(store).await.unwrap());
        let hellos = Hellos::start(hub.clone());
        let answers = futures::future::join_all((0..60).map(|i| {
            let hellos = hellos.clone();
            async move {
                let hello = Hello {
                    id: format!("c{i}"),
                    ..Hello::default()
                };
                (i, hellos.hello(hello).await.unwrap())
            }
        }))
        .await;
        for (i, registration) in answers {
            match registration {
                Some(registration) => {
                    assert_eq!(registration.id, format!("c{i}"));
                    assert_eq!(registration.labels["n"], i.to_string());
                }
                None => assert!(i >= 50, "c{i} is registered"),
            }
        }
        let seen = hub.store().clusters().await.unwrap();
        assert!(seen.iter().all(|c| c.last_seen_unix_millis > 1), "every hello recorded");
    }
}
