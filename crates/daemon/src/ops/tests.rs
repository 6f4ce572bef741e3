use std::sync::Arc;
use std::time::Duration;

use banger_core::store::Store;
use banger_proto::methods::op::{OpState, Operation};
use banger_proto::ErrorKind;
use serde_json::json;

use super::Ops;
use crate::error::Error;

/// An operation kind for these tests, with a free-form result.
struct TestOp;
impl Operation for TestOp {
    const KIND: &'static str = "test.op";
    type Output = serde_json::Value;
}

fn ops() -> (tempfile::TempDir, Arc<Store>, Ops) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
    let ops = Ops::with_cancel_grace(store.clone(), Duration::from_millis(50));
    (dir, store, ops)
}

#[tokio::test]
async fn stages_are_timed_and_the_result_is_kept() {
    let (_d, store, ops) = ops();
    let id = ops.begin::<TestOp, _, _>("thing", 1000, |op| async move {
        op.stage("one");
        tokio::time::sleep(Duration::from_millis(20)).await;
        op.progress(5, 10, "bytes");
        op.stage("two");
        Ok(json!({"done": true}))
    });
    let info = loop {
        let i = ops
            .wait(&id, None, 0, Duration::from_secs(5))
            .await
            .unwrap();
        if i.state.is_finished() {
            break i;
        }
    };
    assert_eq!(info.state, OpState::Succeeded);
    assert_eq!(info.result, Some(json!({"done": true})));
    let names: Vec<_> = info.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["one", "two"]);
    assert!(
        info.stages[0].duration_ms.unwrap() >= 20.0,
        "{:?}",
        info.stages
    );
    assert!(info.finished_at.is_some());
    // Persisted as well.
    let row = store.operation(&id).unwrap().unwrap();
    assert_eq!(row.state, "succeeded");
    // Visibility: the owner and root (None) see it, others do not.
    assert!(ops.info(&id, Some(1000)).is_some());
    assert!(ops.info(&id, None).is_some());
    assert!(ops.info(&id, Some(1001)).is_none());
}

#[tokio::test]
async fn wait_returns_on_change_not_on_timeout() {
    let (_d, _s, ops) = ops();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let id = ops.begin::<TestOp, _, _>("x", 0, |op| async move {
        op.stage("waiting");
        let _ = rx.await;
        Ok(json!(null))
    });
    let mut first = ops.info(&id, None).unwrap();
    while first.stage != "waiting" {
        first = ops
            .wait(&id, None, first.revision, Duration::from_secs(5))
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    let waiter = ops.wait(&id, None, first.revision, Duration::from_secs(10));
    tokio::pin!(waiter);
    tokio::select! {
        _ = &mut waiter => panic!("returned before anything changed"),
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    tx.send(()).unwrap();
    let next = waiter.await.unwrap();
    assert!(next.revision > first.revision);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn cancel_ends_even_a_body_that_does_not_look() {
    let (_d, _s, ops) = ops();
    let id = ops.begin::<TestOp, _, _>("x", 0, |op| async move {
        op.stage("forever");
        std::future::pending::<()>().await;
        Ok(json!(null))
    });
    ops.cancel(&id, None).unwrap();
    let mut info = ops.info(&id, None).unwrap();
    for _ in 0..100 {
        if info.state.is_finished() {
            break;
        }
        info = ops
            .wait(&id, None, info.revision, Duration::from_secs(1))
            .await
            .unwrap();
    }
    assert_eq!(info.state, OpState::Cancelled);
    assert!(info.error.unwrap().is(ErrorKind::Cancelled));
}

#[tokio::test]
async fn failures_are_recorded_and_restart_fails_running_ones() {
    let (dir, store, ops) = ops();
    let id = ops.begin::<TestOp, _, _>(
        "x",
        0,
        |_op| async move { Err(Error::precondition("no disk")) },
    );
    let mut info = ops.info(&id, None).unwrap();
    while !info.state.is_finished() {
        info = ops
            .wait(&id, None, info.revision, Duration::from_secs(1))
            .await
            .unwrap();
    }
    assert_eq!(info.state, OpState::Failed);
    assert_eq!(info.error.unwrap().message, "no disk");

    // One left running when the "daemon" goes away...
    let _hung = ops.begin::<TestOp, _, _>("y", 0, |_op| std::future::pending());
    drop(ops);
    drop(store);
    // ...is failed by the next start.
    let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
    let ops = Ops::new(store);
    assert_eq!(ops.fail_interrupted().unwrap(), 1);
    let list = ops.list(None, true).unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|o| o.state == OpState::Failed));
    assert!(list
        .iter()
        .any(|o| o.error.as_ref().unwrap().message.contains("interrupted")));
}

/// `[limits] running_operations`: a user at the limit is refused (busy), root
/// never is, and a finished operation frees its slot.
#[tokio::test]
async fn running_operations_are_limited_per_user() {
    let (_d, _store, ops) = ops();
    let _hung = ops.begin::<TestOp, _, _>("x", 1000, |_op| std::future::pending());
    ops.check_limit(1000, 2).unwrap();
    ops.check_limit(2000, 1).unwrap();
    let e = banger_proto::RpcError::from(ops.check_limit(1000, 1).unwrap_err());
    assert!(e.is(ErrorKind::Busy), "{e:?}");
    assert!(e.message.contains("running_operations"), "{}", e.message);
    let _root = ops.begin::<TestOp, _, _>("y", 0, |_op| std::future::pending());
    ops.check_limit(0, 0).unwrap();
    let id = ops.begin::<TestOp, _, _>("z", 2000, |_op| async { Ok(json!({})) });
    let mut rev = 0;
    loop {
        let info = ops
            .wait(&id, None, rev, Duration::from_secs(5))
            .await
            .unwrap();
        if info.state != OpState::Running {
            break;
        }
        rev = info.revision;
    }
    ops.check_limit(2000, 1).unwrap();
}
