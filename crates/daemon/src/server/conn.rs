//! One client connection: read lines (with their descriptors), run each
//! request through the table, write the response. Requests on one connection
//! run one after another, so responses come back in order; clients wanting
//! parallelism open more connections.

use std::io::IoSliceMut;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use banger_proto::jsonrpc::{self, Incoming, Request, Response};
use banger_proto::{ErrorKind, RpcError, MAX_FDS_PER_REQUEST, MAX_REQUEST_BYTES};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde_json::Value;
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::framing::{Frame, Framer, Line};
use super::limits::{self, Refused};
use crate::app::App;
use crate::caller::{Caller, Ctx, Fds};
use crate::rpc::dispatch::Table;

pub async fn serve(d: Arc<App>, table: Arc<Table>, stream: UnixStream, caller: Caller) {
    tracing::debug!(uid = caller.uid, pid = caller.pid, "client connected");
    let mut framer = Framer::new(MAX_REQUEST_BYTES, MAX_FDS_PER_REQUEST);
    let mut buf = vec![0u8; 64 * 1024];
    // When the line in progress began (its first byte arrived).
    let mut line_began: Option<tokio::time::Instant> = None;
    loop {
        while let Some(frame) = framer.next_frame() {
            let out = match frame {
                Frame::TooLarge => Some(jsonrpc::encode_responses(
                    &[Response::error(
                        Value::Null,
                        RpcError::new(
                            ErrorKind::RequestTooLarge,
                            format!("request line longer than {MAX_REQUEST_BYTES} bytes"),
                        )
                        .with("limit", MAX_REQUEST_BYTES),
                    )],
                    false,
                )),
                Frame::Line(line) => handle_line(&d, &table, caller, line).await,
            };
            if let Some(bytes) = out {
                if let Err(e) = write_all(&stream, &bytes).await {
                    tracing::debug!(error = %e, "client went away before its response");
                    return;
                }
            }
        }
        // The client's clock: a started line must finish soon, an idle
        // connection may wait longer; neither runs while a request does.
        let now = tokio::time::Instant::now();
        let deadline = match (framer.mid_line(), line_began) {
            (true, Some(t)) => t + limits::PARTIAL_LINE_TIMEOUT,
            (true, None) => {
                line_began = Some(now);
                now + limits::PARTIAL_LINE_TIMEOUT
            }
            (false, _) => {
                line_began = None;
                now + limits::IDLE_TIMEOUT
            }
        };
        let read = tokio::select! {
            r = recv(&stream, &mut buf) => r,
            _ = tokio::time::sleep_until(deadline) => {
                let mid = framer.mid_line();
                tracing::info!(uid = caller.uid, mid_request = mid, "closing a connection that timed out");
                if mid {
                    let err = RpcError::new(
                        ErrorKind::Timeout,
                        format!(
                            "request line not completed within {}s; closing the connection",
                            limits::PARTIAL_LINE_TIMEOUT.as_secs()
                        ),
                    );
                    let bytes = jsonrpc::encode_responses(&[Response::error(Value::Null, err)], false);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write_all(&stream, &bytes)).await;
                }
                return;
            }
            _ = d.shutdown.cancelled() => return,
        };
        match read {
            Ok((0, _)) => {
                if framer.has_partial() {
                    tracing::debug!(uid = caller.uid, "client hung up mid-request");
                }
                return;
            }
            Ok((n, fds)) => framer.push(&buf[..n], fds),
            Err(e) => {
                tracing::debug!(error = %e, "read failed; closing connection");
                return;
            }
        }
    }
}

/// Answers a connection over its caps with one error line and closes it. The
/// write is bounded: a client that does not read gets nothing.
pub async fn refuse(stream: UnixStream, why: Refused) {
    let err = RpcError::new(ErrorKind::Busy, why.to_string());
    let bytes = jsonrpc::encode_responses(&[Response::error(Value::Null, err)], false);
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        write_all(&stream, &bytes),
    )
    .await;
}

/// Runs one line; `None` when nothing is to be sent (notifications only).
async fn handle_line(d: &Arc<App>, table: &Table, caller: Caller, line: Line) -> Option<Vec<u8>> {
    match jsonrpc::decode(&line.bytes) {
        Err(resp) => Some(jsonrpc::encode_responses(&[resp], false)),
        Ok(Incoming::Single(Err(resp))) => Some(jsonrpc::encode_responses(&[resp], false)),
        Ok(Incoming::Single(Ok(req))) => {
            let resp = run(d, table, caller, req, Fds::new(line.fds)).await?;
            Some(jsonrpc::encode_responses(&[resp], false))
        }
        Ok(Incoming::Batch(items)) => {
            if !line.fds.is_empty() {
                // Which member would own which descriptor is ambiguous.
                let err = RpcError::new(
                    ErrorKind::InvalidRequest,
                    "descriptors cannot be passed with a batch; send such requests alone",
                );
                return Some(jsonrpc::encode_responses(
                    &[Response::error(Value::Null, err)],
                    false,
                ));
            }
            let mut out = Vec::new();
            for item in items {
                match item {
                    Err(resp) => out.push(resp),
                    Ok(req) => out.extend(run(d, table, caller, req, Fds::default()).await),
                }
            }
            (!out.is_empty()).then(|| jsonrpc::encode_responses(&out, true))
        }
    }
}

async fn run(
    d: &Arc<App>,
    table: &Table,
    caller: Caller,
    req: Request,
    fds: Fds,
) -> Option<Response> {
    let started = std::time::Instant::now();
    let ctx = Ctx { caller, fds };
    let outcome = table.call(d.clone(), ctx, &req.method, req.params).await;
    let elapsed_us = started.elapsed().as_micros() as u64;
    match &outcome {
        Ok(_) => tracing::debug!(method = %req.method, uid = caller.uid, elapsed_us, "ok"),
        Err(e) => {
            tracing::info!(method = %req.method, uid = caller.uid, elapsed_us, code = e.code, error = %e, "error")
        }
    }
    // Notifications get no response, even on error (JSON-RPC 2.0 §4.1).
    let id = req.id?;
    Some(Response { id, outcome })
}

/// One `recvmsg`: bytes plus any descriptors (close-on-exec). A message with
/// more descriptors than allowed has them all closed and yields none, so the
/// request fails for lack of them rather than running with a partial set.
async fn recv(stream: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    loop {
        stream.readable().await?;
        let r = stream.try_io(Interest::READABLE, || {
            let mut space = [0u8; rustix::cmsg_space!(ScmRights(MAX_FDS_PER_REQUEST))];
            let mut anc = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(buf)],
                &mut anc,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let mut fds = Vec::new();
            for m in anc.drain() {
                if let RecvAncillaryMessage::ScmRights(got) = m {
                    fds.extend(got);
                }
            }
            if msg.flags.bits() & libc::MSG_CTRUNC as u32 != 0 {
                tracing::warn!(
                    "client sent more than {MAX_FDS_PER_REQUEST} descriptors; dropped them"
                );
                fds.clear();
            }
            Ok((msg.bytes, fds))
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn write_all(stream: &UnixStream, bytes: &[u8]) -> std::io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        stream.writable().await?;
        match stream.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
