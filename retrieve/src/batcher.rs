//! Runs the embedder on its own thread and batches concurrent requests together: while one batch
//! runs, new requests queue; the next batch takes everything queued (up to a bound). A lone
//! request never waits for company.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};

use tokio::sync::oneshot;

use crate::{Embedder, RetrieveError};

/// At most this many texts go through the model in one round (they are still cut into padded
/// batches of similar length inside).
const MAX_TEXTS_PER_ROUND: usize = 512;

struct Request {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, RetrieveError>>,
}

/// A handle to the embedding thread; cheap to clone. The thread ends when every handle is gone.
#[derive(Clone)]
pub struct Batcher {
    embedder: Arc<Embedder>,
    queue: Sender<Request>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("embedder", &self.embedder)
            .finish()
    }
}

impl Batcher {
    pub fn start(embedder: Arc<Embedder>) -> Result<Self, RetrieveError> {
        let (queue, requests) = mpsc::channel();
        let worker = Arc::clone(&embedder);
        std::thread::Builder::new()
            .name("quiver-embed".into())
            .spawn(move || run(&worker, &requests))
            .map_err(|e| {
                RetrieveError::Embedding(format!("cannot start the embedding thread: {e}"))
            })?;
        Ok(Self { embedder, queue })
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Embeds `texts` (unit vectors, in order), batched with whatever else is queued.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, RetrieveError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request { texts, reply })
            .map_err(|_| RetrieveError::Stopped)?;
        answer.await.map_err(|_| RetrieveError::Stopped)?
    }
}

fn run(embedder: &Embedder, requests: &Receiver<Request>) {
    while let Ok(first) = requests.recv() {
        let mut round = vec![first];
        let mut texts = round[0].texts.len();
        while texts < MAX_TEXTS_PER_ROUND {
            match requests.try_recv() {
                Ok(next) => {
                    texts += next.texts.len();
                    round.push(next);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let all: Vec<&str> = round
            .iter()
            .flat_map(|r| r.texts.iter().map(String::as_str))
            .collect();
        match embedder.embed(&all) {
            Ok(mut vectors) => {
                for request in round.into_iter().rev() {
                    let mine = vectors.split_off(vectors.len() - request.texts.len());
                    let _ = request.reply.send(Ok(mine));
                }
            }
            Err(error) => {
                let message = error.to_string();
                for request in round {
                    let _ = request
                        .reply
                        .send(Err(RetrieveError::Embedding(message.clone())));
                }
            }
        }
    }
}
