//! Changes from every node: PostgreSQL notifications feed this node's search index and its websocket clients.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use crate::sessions::User;
use crate::{db, Shared};

/// Listens on the `teamboard` channel for as long as the node runs, reconnecting after a lost connection (and then
/// asking the index to catch up, since notifications sent meanwhile are gone).
pub async fn listen(state: Shared) {
    let mut delay = Duration::from_millis(200);
    loop {
        match tokio_postgres::connect(&state.cfg.database_url, tokio_postgres::NoTls).await {
            Ok((client, mut conn)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                let listening = async {
                    client.batch_execute(&format!("LISTEN {}", db::CHANNEL)).await?;
                    Ok::<_, tokio_postgres::Error>(())
                };
                // The connection must be polled for LISTEN to complete.
                let mut listening = std::pin::pin!(listening);
                let ok = loop {
                    tokio::select! {
                        r = &mut listening => break r.is_ok(),
                        m = messages.next() => if m.is_none() { break false },
                    }
                };
                if ok {
                    delay = Duration::from_millis(200);
                    state.reindex.notify_one();
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                state.reindex.notify_one();
                                let _ = state.events.send(n.payload().to_string());
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!("notification connection lost: {e}");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("cannot listen for changes: {e}"),
        }
        if *state.shutdown.borrow() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Keeps the search index caught up with the database: on every notification, and every two seconds in case one
/// was missed. The node turns Ready after its first complete pass, caught up with what the database held then.
pub async fn catch_up(state: Shared) {
    loop {
        let cursor = state.index.cursor();
        let index = state.index.clone();
        let pass = db::changes(&state.pool, cursor, 500, |rows| {
            let index = index.clone();
            async move {
                tokio::task::spawn_blocking(move || index.apply(&rows, cursor))
                    .await
                    .map_err(|e| crate::Error::Search(format!("indexing task: {e}")))?
            }
        })
        .await;
        match pass {
            Ok(horizon) => {
                state.index.advance(horizon);
                if !state.ready.swap(true, Ordering::SeqCst) {
                    tracing::info!(
                        docs = state.index.docs(),
                        origin = state.index.origin().as_str(),
                        "search index caught up; ready"
                    );
                }
            }
            Err(e) => tracing::warn!("catching up the search index: {e}"),
        }
        state.metrics.index_docs.set(state.index.docs() as i64);
        state.metrics.index_cursor.set(state.index.cursor() as i64);
        tokio::select! {
            _ = state.reindex.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// `GET /ws`: a websocket that receives every change as a JSON event, starting with a `hello` naming this node.
pub async fn websocket(State(state): State<Shared>, _user: User, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| client(state, socket))
}

async fn client(state: Shared, mut socket: WebSocket) {
    let mut events = state.events.subscribe();
    let mut shutdown = state.shutdown.clone();
    state.metrics.websockets.inc();
    let hello = serde_json::json!({"type": "hello", "node": state.cfg.node, "version": state.cfg.version});
    if socket.send(Message::Text(hello.to_string().into())).await.is_ok() {
        loop {
            tokio::select! {
                e = events.recv() => match e {
                    Ok(text) => if socket.send(Message::Text(text.into())).await.is_err() { break },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let lag = serde_json::json!({"type": "lagged", "missed": n});
                        if socket.send(Message::Text(lag.to_string().into())).await.is_err() { break }
                    }
                    Err(_) => break,
                },
                m = socket.recv() => match m {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                    let frame = CloseFrame { code: 1001, reason: "node shutting down; reconnect".into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    break;
                }
            }
        }
    }
    state.metrics.websockets.dec();
}
