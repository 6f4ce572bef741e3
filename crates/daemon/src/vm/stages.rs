//! Per-stage timing of lifecycle work: kept for `vm show` (last start) and,
//! for `vm create`, mirrored into the operation the client follows.

use std::sync::Mutex;
use std::time::Instant;

use banger_core::timefmt;
use banger_proto::methods::op::StageInfo;

use crate::ops::OpHandle;

pub struct Stages {
    op: Option<OpHandle>,
    done: Mutex<(Vec<StageInfo>, Option<Instant>)>,
}

impl Stages {
    pub fn new(op: Option<OpHandle>) -> Stages {
        Stages {
            op,
            done: Mutex::new((Vec::new(), None)),
        }
    }

    /// Ends the current stage and starts `name`.
    pub fn stage(&self, name: &str) {
        self.close();
        let mut g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        g.0.push(StageInfo {
            name: name.to_string(),
            started_at: timefmt::now(),
            duration_ms: None,
        });
        g.1 = Some(Instant::now());
        drop(g);
        if let Some(op) = &self.op {
            op.stage(name);
        }
    }

    pub fn op(&self) -> Option<&OpHandle> {
        self.op.as_ref()
    }

    /// Ends the current stage and returns them all.
    pub fn finish(&self) -> Vec<StageInfo> {
        self.close();
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The stages since (and including) the one named `from`.
    pub fn since(&self, from: &str) -> Vec<StageInfo> {
        let all = self.finish();
        match all.iter().position(|s| s.name == from) {
            Some(i) => all[i..].to_vec(),
            None => all,
        }
    }

    fn close(&self) {
        let mut g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let (stages, started) = &mut *g;
        if let (Some(t), Some(last)) = (started.take(), stages.last_mut()) {
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            last.duration_ms = Some((ms * 1000.0).round() / 1000.0);
        }
    }
}
