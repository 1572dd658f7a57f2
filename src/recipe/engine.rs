//! The recipe engine: runs a validated recipe on a station's instruments and files everything
//! in the results store as it happens.
//!
//! It does no I/O of its own: instruments through [`Instrument`] handles, results through
//! [`Store`]. Each measurement is stored the moment it is taken. Abort (a
//! [`CancellationToken`]) is honoured at request boundaries: a request on the wire completes,
//! waits are cut short, and then the cleanup steps run. Cleanup always runs, and its own
//! failures are recorded. Progress goes out on a channel for live displays.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::expr::{Expr, Var, Vars};
use super::limits;
use super::load::{Recipe, StationView, Step, StepKind, duration, sweep_label, sweep_var};
use super::schema::{Aggregate, LimitSpec, OnFail};
use crate::driver::schema::ArgType;
use crate::instrument::Instrument;
use crate::reading::Value;
use crate::store::{
    Limits, NewMeasurement, NewRun, RunId, RunVerdict, StepId, StepStatus, Store, StoreError,
    Verdict,
};

/// What a live display (CLI now, HTTP/SSE later) is told while a run goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Waiting for another run to release an instrument (before the run is filed).
    Queued {
        instrument: String,
        holder: String,
    },
    RunStarted {
        run: RunId,
        recipe: String,
    },
    StepStarted {
        index: i64,
        name: String,
        kind: &'static str,
    },
    /// One round of a stabilize step: the newest readings of one quantity and their spread.
    Stabilizing {
        step: String,
        quantity: String,
        unit: String,
        last: Vec<f64>,
        spread: f64,
        band: f64,
        stable: bool,
    },
    /// One round of a wait_until step.
    Waiting {
        step: String,
        /// (quantity, value, unit) as read this round.
        readings: Vec<(String, f64, String)>,
        holds: bool,
        held: Duration,
    },
    Measured {
        name: String,
        value: Option<f64>,
        unit: String,
        limits: Limits,
        verdict: Option<Verdict>,
    },
    StepFinished {
        index: i64,
        name: String,
        status: StepStatus,
        message: Option<String>,
    },
    /// The run waits for the operator (see [`ConfirmRequest`]).
    Confirm {
        step: String,
        prompt: String,
    },
    CleanupStarted,
    RunFinished {
        run: RunId,
        verdict: RunVerdict,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("station `{station}` has no instrument for role `{role}`")]
    MissingInstrument { station: String, role: String },
    #[error(transparent)]
    Busy(#[from] super::locks::Busy),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to run: a recipe validated against `station`, with its parameter values.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub recipe: Recipe,
    pub station: StationView,
    pub params: Vars,
    pub dut: String,
    pub operator: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    pub run: RunId,
    pub verdict: RunVerdict,
}

/// A `confirm` step asking the operator; answer `true` to go on, `false` to fail the step.
#[derive(Debug)]
pub struct ConfirmRequest {
    pub run: RunId,
    pub step: String,
    pub prompt: String,
    pub reply: oneshot::Sender<bool>,
}

/// How a run talks to the outside while it goes.
#[derive(Debug, Default)]
pub struct Hooks {
    pub progress: Option<mpsc::UnboundedSender<Progress>>,
    pub abort: CancellationToken,
    /// Where `confirm` steps ask; without it a `confirm` step is an error.
    pub confirm: Option<mpsc::Sender<ConfirmRequest>>,
    /// Instrument ownership shared with other runs of this process (and of other processes,
    /// with [`super::locks::Locks::in_dir`]); the run is refused when one of its instruments is
    /// held...
    pub locks: Option<super::locks::Locks>,
    /// ...or waits in line until they are free (an abort gives up waiting).
    pub queue: bool,
}

/// Run `spec` on `instruments` (by instrument id; every instrument of the station's roles must
/// be there), filing results in `store`. Returns once cleanup has run and the verdict is filed.
pub async fn run(
    spec: &RunSpec,
    instruments: &BTreeMap<String, Instrument>,
    store: &Store,
    progress: Option<mpsc::UnboundedSender<Progress>>,
    abort: CancellationToken,
) -> Result<RunOutcome, EngineError> {
    let hooks = Hooks {
        progress,
        abort,
        ..Hooks::default()
    };
    run_with(spec, instruments, store, hooks).await
}

/// [`run`] with every hook, including operator confirmations.
pub async fn run_with(
    spec: &RunSpec,
    instruments: &BTreeMap<String, Instrument>,
    store: &Store,
    hooks: Hooks,
) -> Result<RunOutcome, EngineError> {
    let Hooks {
        progress,
        abort,
        confirm,
        locks,
        queue,
    } = hooks;
    let mut by_role = BTreeMap::new();
    for (role, (id, _)) in &spec.station.roles {
        if let Some(i) = instruments.get(id) {
            by_role.insert(role.clone(), i.clone());
        }
    }
    for role in &spec.recipe.meta.roles {
        if !by_role.contains_key(role) {
            return Err(EngineError::MissingInstrument {
                station: spec.station.name.clone(),
                role: role.clone(),
            });
        }
    }
    let mut holder = String::new();
    let _guard = match &locks {
        Some(l) => {
            let mut ids: Vec<String> = spec
                .recipe
                .meta
                .roles
                .iter()
                .filter_map(|r| spec.station.roles.get(r).map(|(id, _)| id.clone()))
                .collect();
            ids.sort();
            ids.dedup();
            holder = format!(
                "recipe `{}` for DUT {} on station `{}`",
                spec.recipe.meta.name, spec.dut, spec.station.name
            );
            match l.try_acquire(&ids, &holder) {
                Ok(g) => Some(g),
                Err(busy) if queue => {
                    if let Some(tx) = &progress {
                        let _ = tx.send(Progress::Queued {
                            instrument: busy.instrument.clone(),
                            holder: busy.holder.clone(),
                        });
                    }
                    Some(l.acquire(&ids, &holder, &abort).await?)
                }
                Err(busy) => return Err(busy.into()),
            }
        }
        None => None,
    };
    let parameters: serde_json::Map<String, serde_json::Value> = spec
        .params
        .iter()
        .map(|(k, v)| (k.clone(), json!({"value": v.value, "unit": v.unit})))
        .collect();
    let run = store
        .create_run(NewRun {
            recipe_name: spec.recipe.meta.name.clone(),
            recipe_version: spec.recipe.meta.version.clone(),
            recipe_hash: spec.recipe.hash.clone(),
            dut_serial: spec.dut.clone(),
            station: spec.station.name.clone(),
            operator: spec.operator.clone(),
            parameters: serde_json::Value::Object(parameters),
        })
        .await?;
    if let Some(g) = &_guard {
        // Another process refused by these instruments cannot ask us which run holds them.
        g.describe_to_other_processes(&format!("run {run} ({holder})"));
    }
    let mut ex = Exec {
        store: store.clone(),
        run,
        by_role,
        vars: spec.params.clone(),
        progress,
        confirm,
        abort: abort.clone(),
        next_index: 0,
        measured: Vec::new(),
        suffix: Vec::new(),
        failed: false,
        errored: false,
        aborted: false,
        stopped: false,
    };
    ex.emit(Progress::RunStarted {
        run,
        recipe: spec.recipe.meta.name.clone(),
    });
    ex.steps(&spec.recipe.steps, false).await;
    // Cleanup must not be cut short by the abort that may have ended the steps.
    ex.abort = CancellationToken::new();
    ex.emit(Progress::CleanupStarted);
    ex.event("cleanup_started", json!({})).await;
    let (failed, errored) = (ex.failed, ex.errored);
    ex.failed = false;
    ex.errored = false;
    ex.stopped = false;
    ex.steps(&spec.recipe.cleanup, true).await;
    let cleanup_trouble = ex.failed || ex.errored;
    let verdict = if ex.aborted {
        RunVerdict::Aborted
    } else if errored {
        RunVerdict::Error
    } else if failed {
        RunVerdict::Fail
    } else if cleanup_trouble {
        // The bench was not put back in a known state: the run did not end cleanly.
        RunVerdict::Error
    } else {
        RunVerdict::Pass
    };
    store.finish_run(run, verdict).await?;
    ex.emit(Progress::RunFinished { run, verdict });
    Ok(RunOutcome { run, verdict })
}

/// How a step ended.
enum Outcome {
    Pass,
    /// A limit failed or a stabilization gave up.
    Fail(String),
    /// An instrument fault, a timeout, a store failure: the run stops.
    Error(String),
    Aborted,
}

struct Exec {
    store: Store,
    run: RunId,
    by_role: BTreeMap<String, Instrument>,
    vars: Vars,
    progress: Option<mpsc::UnboundedSender<Progress>>,
    confirm: Option<mpsc::Sender<ConfirmRequest>>,
    abort: CancellationToken,
    next_index: i64,
    /// Measurements taken by steps still running, filed with their step's end.
    measured: Vec<NewMeasurement>,
    /// Enclosing sweeps' (value, unit), outermost first.
    suffix: Vec<(f64, String)>,
    failed: bool,
    errored: bool,
    aborted: bool,
    /// A failed step with `on_fail = "stop"` ended the steps.
    stopped: bool,
}

/// Per quantity of a measure step: samples (None = invalid), unit, last raw reply, last
/// invalid marker.
type Taken = (Vec<Option<f64>>, String, Option<String>, Option<String>);

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Exec {
    fn emit(&self, p: Progress) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(p);
        }
    }

    async fn event(&self, kind: &str, payload: serde_json::Value) {
        // The event log is for live views: a failed append must not fail the run, and waiting
        // for each commit would cost every step two writer round trips (benches/recipe.rs).
        if let Err(e) = self.store.queue_event(self.run, kind, payload) {
            tracing::warn!(run = %self.run, error = %e, "cannot store run event");
        }
    }

    /// Run steps in order; in cleanup every step runs whatever happens. Returns false when the
    /// run must stop.
    fn steps<'a>(&'a mut self, steps: &'a [Step], cleanup: bool) -> BoxFut<'a, bool> {
        Box::pin(async move {
            for s in steps {
                if !cleanup && self.abort.is_cancelled() {
                    self.aborted = true;
                    return false;
                }
                let go_on = self.step(s, cleanup).await;
                if (!go_on || self.stopped) && !cleanup {
                    return false;
                }
            }
            true
        })
    }

    fn label(&self, name: &str) -> String {
        let mut out = name.to_string();
        for (v, u) in &self.suffix {
            out.push('@');
            out.push_str(&sweep_label(*v, u));
        }
        out
    }

    /// Set a value in scope under its plain name and, inside sweeps, its per-value name.
    fn define(&mut self, name: &str, value: f64, unit: &str) {
        let var = Var {
            value,
            unit: unit.to_string(),
        };
        // Innermost sweep first: after an inner sweep ends, its per-value names are what the
        // enclosing steps see, and so on outward (as validation scopes them).
        let mut full = name.to_string();
        self.vars.insert(full.clone(), var.clone());
        for (v, u) in self.suffix.iter().rev() {
            full = sweep_var(&full, *v, u);
            self.vars.insert(full.clone(), var.clone());
        }
    }

    async fn step(&mut self, s: &Step, cleanup: bool) -> bool {
        let index = self.next_index;
        self.next_index += 1;
        let name = self.label(&s.name);
        let kind = s.kind.as_str();
        let step_id = match self.store.start_step(self.run, index, &name, kind).await {
            Ok(id) => id,
            Err(e) => {
                self.errored = true;
                tracing::error!(error = %e, "cannot store step start");
                return false;
            }
        };
        self.emit(Progress::StepStarted {
            index,
            name: name.clone(),
            kind,
        });
        self.event(
            "step_started",
            json!({"index": index, "name": name, "kind": kind, "cleanup": cleanup}),
        )
        .await;
        let mut attempt = 0;
        let errored_before = self.errored;
        let outcome = loop {
            let o = match s.common.timeout {
                Some(t) => match tokio::time::timeout(t, self.kind(s, step_id)).await {
                    Ok(o) => o,
                    Err(_) => Outcome::Error(format!(
                        "step `{name}` timed out after {}",
                        humantime::format_duration(t)
                    )),
                },
                None => self.kind(s, step_id).await,
            };
            // Only errors are retried (a fault may be passing); a failed limit is a result.
            // Groups retry on failure themselves; `retries` on a group retries its errors.
            let Outcome::Error(msg) = o else { break o };
            if attempt >= s.common.retries || self.aborted {
                break Outcome::Error(if attempt > 0 {
                    format!("{msg} (after {} tries)", attempt + 1)
                } else {
                    msg
                });
            }
            attempt += 1;
            self.errored = errored_before;
            // What the failed try measured is filed now, not after the retry delay: a crash
            // while waiting must not lose it.
            self.file_measured(step_id).await;
            self.event(
                "retry",
                json!({"index": index, "name": name, "try": attempt + 1, "error": msg}),
            )
            .await;
            if let Err(o) = self
                .sleep(s.common.retry_delay.unwrap_or(Duration::ZERO))
                .await
            {
                break o;
            }
        };
        let (status, message, go_on) = match outcome {
            Outcome::Pass => (StepStatus::Pass, None, true),
            Outcome::Fail(m) => {
                self.failed = true;
                if s.common.on_fail == OnFail::Stop {
                    self.stopped = true;
                }
                (StepStatus::Fail, Some(m), !self.stopped)
            }
            Outcome::Error(m) => {
                self.errored = true;
                (StepStatus::Error, Some(m), false)
            }
            Outcome::Aborted => {
                self.aborted = true;
                (StepStatus::Aborted, Some("aborted".to_string()), false)
            }
        };
        // The step's measurements are filed with its end, in one transaction: durable at the
        // step boundary for one commit instead of one per measurement (benches/recipe.rs).
        // Those of enclosing steps (a group around this one) wait for their own step's end.
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.measured)
            .into_iter()
            .partition(|m| m.step_id == step_id);
        self.measured = others;
        if let Err(e) = self
            .store
            .finish_step_with(step_id, status, message.as_deref(), mine)
            .await
        {
            self.errored = true;
            tracing::error!(error = %e, "cannot store step end");
        }
        self.event(
            "step_finished",
            json!({"index": index, "name": name, "status": status.as_str(), "message": message}),
        )
        .await;
        self.emit(Progress::StepFinished {
            index,
            name,
            status,
            message,
        });
        go_on
    }

    fn instrument(&self, role: &str) -> Result<Instrument, Outcome> {
        self.by_role
            .get(role)
            .cloned()
            .ok_or_else(|| Outcome::Error(format!("no instrument for role `{role}`")))
    }

    /// Sleep unless aborted first.
    async fn sleep(&self, d: Duration) -> Result<(), Outcome> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.abort.cancelled() => Err(Outcome::Aborted),
        }
    }

    fn boundary(&self) -> Result<(), Outcome> {
        if self.abort.is_cancelled() {
            Err(Outcome::Aborted)
        } else {
            Ok(())
        }
    }

    fn kind<'a>(&'a mut self, s: &'a Step, step_id: StepId) -> BoxFut<'a, Outcome> {
        Box::pin(async move {
            let r = match &s.kind {
                StepKind::Act(a) => self.act(a).await,
                StepKind::Wait(w) => match duration(&w.duration, &self.vars) {
                    Ok(d) => self.sleep(d).await.map(|_| Outcome::Pass),
                    Err(m) => Err(Outcome::Error(m)),
                },
                StepKind::Measure(m) => self.measure(m, step_id).await,
                StepKind::Stabilize(st) => self.stabilize(s, st).await,
                StepKind::WaitUntil(w) => self.wait_until(s, w).await,
                StepKind::Compute(c) => {
                    self.value(&c.output, &c.expr, &c.unit, c.limit.as_ref(), step_id, true)
                        .await
                }
                StepKind::Check(c) => {
                    self.value(&s.name, &c.expr, &c.unit, Some(&c.limit), step_id, false)
                        .await
                }
                StepKind::Group(head, inner) => self.group(s, head, inner).await,
                StepKind::Confirm(c) => self.confirm(s, &c.prompt).await,
                StepKind::Sweep(head, inner) => {
                    let mut result = Outcome::Pass;
                    for v in &head.values {
                        if self.abort.is_cancelled() {
                            result = Outcome::Aborted;
                            break;
                        }
                        self.vars.insert(
                            head.var.clone(),
                            Var {
                                value: *v,
                                unit: head.unit.clone(),
                            },
                        );
                        self.suffix.push((*v, head.unit.clone()));
                        let failed_before = self.failed;
                        self.failed = false;
                        let go_on = self.steps(inner, false).await;
                        let failed_here = self.failed;
                        self.failed |= failed_before;
                        self.suffix.pop();
                        if failed_here && matches!(result, Outcome::Pass) {
                            result = Outcome::Fail(format!(
                                "failed at {} = {}",
                                head.var,
                                sweep_label(*v, &head.unit)
                            ));
                        }
                        if !go_on {
                            result = if self.aborted {
                                Outcome::Aborted
                            } else if self.errored {
                                Outcome::Error(format!(
                                    "stopped at {} = {}",
                                    head.var,
                                    sweep_label(*v, &head.unit)
                                ))
                            } else {
                                // A nested step with on_fail = "stop" failed: `stopped` is set,
                                // so the run stops after this sweep too.
                                Outcome::Fail(format!(
                                    "stopped at {} = {}",
                                    head.var,
                                    sweep_label(*v, &head.unit)
                                ))
                            };
                            break;
                        }
                    }
                    Ok(result)
                }
            };
            match r {
                Ok(o) | Err(o) => o,
            }
        })
    }

    async fn confirm(&mut self, s: &Step, prompt: &str) -> Result<Outcome, Outcome> {
        let Some(tx) = self.confirm.clone() else {
            return Err(Outcome::Error(
                "no operator is attached to confirm this step".to_string(),
            ));
        };
        let step = self.label(&s.name);
        let (reply, answer) = oneshot::channel();
        self.emit(Progress::Confirm {
            step: step.clone(),
            prompt: prompt.to_string(),
        });
        self.event("confirm", json!({"step": step, "prompt": prompt}))
            .await;
        let request = ConfirmRequest {
            run: self.run,
            step,
            prompt: prompt.to_string(),
            reply,
        };
        if tx.send(request).await.is_err() {
            return Err(Outcome::Error("the operator prompt is gone".to_string()));
        }
        // Waits for the operator as long as it takes: bound it with the step's `timeout`.
        tokio::select! {
            a = answer => match a {
                Ok(true) => Ok(Outcome::Pass),
                Ok(false) => Ok(Outcome::Fail("the operator declined".to_string())),
                Err(_) => Err(Outcome::Error("the operator prompt is gone".to_string())),
            },
            _ = self.abort.cancelled() => Err(Outcome::Aborted),
        }
    }

    /// Run the nested steps until none fails, up to `tries` times. Errors and aborts end the
    /// group at once; measurements of failed tries stay stored (nothing taken is lost).
    async fn group(
        &mut self,
        s: &Step,
        head: &super::schema::GroupHead,
        inner: &[Step],
    ) -> Result<Outcome, Outcome> {
        let tries = head.tries.max(1);
        let delay = s.common.retry_delay.unwrap_or(Duration::ZERO);
        let failed_before = self.failed;
        for attempt in 1..=tries {
            self.failed = false;
            let go_on = self.steps(inner, false).await;
            let failed_here = self.failed;
            self.failed = failed_before;
            // A nested `on_fail = "stop"` ends this try only; the group's own on_fail decides.
            self.stopped = false;
            if self.aborted {
                return Err(Outcome::Aborted);
            }
            if !go_on && self.errored {
                return Ok(Outcome::Error(format!("error in try {attempt} of {tries}")));
            }
            if !failed_here {
                return Ok(Outcome::Pass);
            }
            if attempt < tries {
                self.event(
                    "retry",
                    json!({"step": self.label(&s.name), "try": attempt + 1, "tries": tries}),
                )
                .await;
                self.sleep(delay).await?;
            }
        }
        Ok(Outcome::Fail(format!("still failing after {tries} tries")))
    }

    async fn act(&mut self, a: &super::schema::Act) -> Result<Outcome, Outcome> {
        let inst = self.instrument(&a.role)?;
        let action = inst.driver().file.actions.get(&a.action).cloned();
        let mut given = BTreeMap::new();
        for (name, value) in &a.args {
            let def = action.as_ref().and_then(|x| x.args.get(name));
            let v = match (value, def) {
                (toml::Value::String(text), Some(def))
                    if matches!(def.arg_type, ArgType::Float | ArgType::Int) =>
                {
                    let target = (!def.unit.is_empty()).then_some(def.unit.as_str());
                    let x = Expr::parse(text)
                        .and_then(|e| e.eval(&self.vars, target))
                        .map_err(Outcome::Error)?;
                    if def.arg_type == ArgType::Int {
                        let n = super::expr::whole_number(x).map_err(|e| {
                            Outcome::Error(format!("argument {name}: `{text}` {e}"))
                        })?;
                        toml::Value::Integer(n)
                    } else {
                        toml::Value::Float(x)
                    }
                }
                _ => value.clone(),
            };
            given.insert(name.clone(), v);
        }
        self.boundary()?;
        inst.act_typed(&a.action, &given)
            .await
            .map_err(|e| Outcome::Error(e.to_string()))?;
        Ok(Outcome::Pass)
    }

    async fn measure(
        &mut self,
        m: &super::schema::Measure,
        step_id: StepId,
    ) -> Result<Outcome, Outcome> {
        let inst = self.instrument(&m.role)?;
        let interval = match &m.interval {
            Some(iv) => duration(iv, &self.vars).map_err(Outcome::Error)?,
            None => Duration::ZERO,
        };
        let names: Vec<&str> = m.quantities.iter().map(String::as_str).collect();
        // Per quantity: samples (None = invalid marker), unit, last raw reply.
        let mut taken: BTreeMap<&str, Taken> = BTreeMap::new();
        for i in 0..m.samples.max(1) {
            if i > 0 {
                self.sleep(interval).await?;
            }
            self.boundary()?;
            let readings = match &m.measurement {
                Some(name) => inst.measure(name).await,
                None => inst.read(&names).await,
            }
            .map_err(|e| Outcome::Error(e.to_string()))?;
            for q in &names {
                let Some(r) = readings.iter().find(|r| r.quantity == *q) else {
                    return Err(Outcome::Error(format!(
                        "{}: no reading of `{q}` came back",
                        inst.id()
                    )));
                };
                let e = taken
                    .entry(q)
                    .or_insert_with(|| (Vec::new(), r.unit.clone(), None, None));
                let (v, invalid) = match &r.value {
                    Value::Invalid { kind, raw } => (None, Some(format!("{kind}: {raw}"))),
                    other => (other.as_f64(), None),
                };
                e.0.push(v);
                e.2 = r.raw.clone();
                if invalid.is_some() {
                    e.3 = invalid;
                }
            }
        }
        let mut outcome = Outcome::Pass;
        for q in &names {
            let Some((samples, unit, raw, invalid)) = taken.remove(q) else {
                continue;
            };
            let value = aggregate(&samples, m.aggregate);
            let invalid = if value.is_none() {
                Some(invalid.unwrap_or_else(|| "invalid".to_string()))
            } else {
                None
            };
            let spec = m.limits.get(*q);
            let o = self
                .record(q, value, invalid, &unit, spec, raw, step_id)
                .await?;
            if let Some(v) = value {
                self.define(q, v, &unit);
            }
            if matches!(o, Outcome::Fail(_)) && matches!(outcome, Outcome::Pass) {
                outcome = o;
            }
        }
        Ok(outcome)
    }

    /// File the measurements `step_id` has taken so far (they are otherwise filed with the
    /// step's end); a store failure makes the run's verdict error, as at the step's end.
    async fn file_measured(&mut self, step_id: StepId) {
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.measured)
            .into_iter()
            .partition(|m| m.step_id == step_id);
        self.measured = others;
        if mine.is_empty() {
            return;
        }
        if let Err(e) = self.store.add_measurements(mine).await {
            self.errored = true;
            tracing::error!(error = %e, "cannot store measurements");
        }
    }

    /// Judge one value and keep it to be filed with its step's end; `Fail` when its verdict is
    /// fail.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &mut self,
        name: &str,
        value: Option<f64>,
        invalid: Option<String>,
        unit: &str,
        spec: Option<&LimitSpec>,
        raw: Option<String>,
        step_id: StepId,
    ) -> Result<Outcome, Outcome> {
        let limits = match spec {
            Some(s) => limits::resolve(s, unit, &self.vars)
                .map_err(|m| Outcome::Error(format!("limit of `{name}`: {m}")))?,
            None => Limits::default(),
        };
        let verdict = limits::verdict(value, &limits);
        let full = self.label(name);
        let m = NewMeasurement {
            step_id,
            name: full.clone(),
            value,
            invalid: invalid.clone(),
            unit: unit.to_string(),
            limits,
            verdict,
            taken_at: SystemTime::now(),
            raw,
        };
        // Refused now, as a write would be, so the step ends in error here and not at its end.
        Store::check_measurement(&m).map_err(|e| Outcome::Error(e.to_string()))?;
        self.measured.push(m);
        self.event(
            "measurement",
            json!({"name": full, "value": value, "invalid": invalid, "unit": unit,
                   "verdict": verdict.map(|v| v.as_str())}),
        )
        .await;
        self.emit(Progress::Measured {
            name: full.clone(),
            value,
            unit: unit.to_string(),
            limits,
            verdict,
        });
        Ok(match verdict {
            Some(Verdict::Fail) => Outcome::Fail(match value {
                Some(v) => format!("{full} = {v} {unit} is outside its limits"),
                None => format!("{full} has no valid value"),
            }),
            _ => Outcome::Pass,
        })
    }

    async fn value(
        &mut self,
        name: &str,
        expr: &str,
        unit: &str,
        spec: Option<&LimitSpec>,
        step_id: StepId,
        define: bool,
    ) -> Result<Outcome, Outcome> {
        // Into the declared unit: `flux / power` computed from mW is converted to lm/W.
        let v = Expr::parse(expr)
            .and_then(|e| e.eval(&self.vars, Some(unit)))
            .map_err(Outcome::Error)?;
        let value = v.is_finite().then_some(v);
        let invalid = value.is_none().then(|| format!("not a number: {v}"));
        let o = self
            .record(name, value, invalid, unit, spec, None, step_id)
            .await?;
        if define && let Some(v) = value {
            self.define(name, v, unit);
        }
        Ok(o)
    }

    async fn wait_until(
        &mut self,
        s: &Step,
        w: &super::schema::WaitUntil,
    ) -> Result<Outcome, Outcome> {
        let inst = self.instrument(&w.role)?;
        let interval = duration(&w.interval, &self.vars).map_err(Outcome::Error)?;
        let max = duration(&w.max_duration, &self.vars).map_err(Outcome::Error)?;
        let hold = match &w.hold {
            Some(h) => duration(h, &self.vars).map_err(Outcome::Error)?,
            None => Duration::ZERO,
        };
        let cond = Expr::parse(&w.condition).map_err(Outcome::Error)?;
        let names: Vec<&str> = w.quantities.iter().map(String::as_str).collect();
        let started = tokio::time::Instant::now();
        let mut since: Option<tokio::time::Instant> = None;
        loop {
            self.boundary()?;
            let readings = inst
                .read(&names)
                .await
                .map_err(|e| Outcome::Error(e.to_string()))?;
            let mut valid = true;
            let mut shown = serde_json::Map::new();
            let mut listed = Vec::new();
            for r in &readings {
                match r.value.as_f64() {
                    Some(v) => {
                        self.define(&r.quantity, v, &r.unit);
                        shown.insert(r.quantity.clone(), json!(v));
                        listed.push((r.quantity.clone(), v, r.unit.clone()));
                    }
                    None => valid = false,
                }
            }
            // An invalid reading breaks the hold: the condition cannot be known to hold.
            let holds = valid && cond.eval(&self.vars, None).map_err(Outcome::Error)? != 0.0;
            let now = tokio::time::Instant::now();
            since = if holds { since.or(Some(now)) } else { None };
            let held = since.map_or(Duration::ZERO, |t| now - t);
            self.emit(Progress::Waiting {
                step: self.label(&s.name),
                readings: listed,
                holds,
                held,
            });
            self.event(
                "wait_until",
                json!({"step": self.label(&s.name), "readings": shown, "holds": holds,
                       "held_s": held.as_secs_f64()}),
            )
            .await;
            if holds && held >= hold {
                return Ok(Outcome::Pass);
            }
            if started.elapsed() + interval > max {
                return Ok(Outcome::Fail(format!(
                    "`{}` did not hold for {} within {}",
                    w.condition,
                    humantime::format_duration(hold),
                    humantime::format_duration(max)
                )));
            }
            self.sleep(interval).await?;
        }
    }

    async fn stabilize(
        &mut self,
        s: &Step,
        st: &super::schema::Stabilize,
    ) -> Result<Outcome, Outcome> {
        let inst = self.instrument(&st.role)?;
        let interval = duration(&st.interval, &self.vars).map_err(Outcome::Error)?;
        let max = duration(&st.max_duration, &self.vars).map_err(Outcome::Error)?;
        let started = tokio::time::Instant::now();
        let names: Vec<&str> = st.quantities.iter().map(String::as_str).collect();
        let mut history: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let n = st.readings.max(2);
        loop {
            self.boundary()?;
            let readings = match &st.measurement {
                Some(m) => inst.measure(m).await,
                None => inst.read(&names).await,
            }
            .map_err(|e| Outcome::Error(e.to_string()))?;
            let mut all_stable = true;
            let mut trend = Vec::new();
            for r in readings
                .iter()
                .filter(|r| names.contains(&r.quantity.as_str()))
            {
                let h = history.entry(r.quantity.clone()).or_default();
                // An invalid reading is never stable: NaN fails every comparison.
                h.push(r.value.as_f64().unwrap_or(f64::NAN));
                let last: Vec<f64> = h.iter().rev().take(n).rev().copied().collect();
                let (lo, hi) = last
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                        (a.min(*v), b.max(*v))
                    });
                let spread = hi - lo;
                let mean = last.iter().sum::<f64>() / last.len() as f64;
                let band = match (st.within, st.within_pct) {
                    (Some(b), _) => b,
                    (_, Some(p)) => mean.abs() * p / 100.0,
                    _ => 0.0,
                };
                let stable =
                    last.len() >= n && last.iter().all(|v| v.is_finite()) && spread <= band;
                all_stable &= stable;
                trend.push(
                    json!({"quantity": r.quantity, "last": last, "spread": spread,
                                  "band": band, "stable": stable, "unit": r.unit}),
                );
                self.emit(Progress::Stabilizing {
                    step: self.label(&s.name),
                    quantity: r.quantity.clone(),
                    unit: r.unit.clone(),
                    last,
                    spread,
                    band,
                    stable,
                });
            }
            self.event(
                "stabilize",
                json!({"step": self.label(&s.name), "quantities": trend}),
            )
            .await;
            if all_stable {
                for r in &readings {
                    if let Some(v) = r.value.as_f64()
                        && names.contains(&r.quantity.as_str())
                    {
                        self.define(&r.quantity, v, &r.unit);
                    }
                }
                return Ok(Outcome::Pass);
            }
            if started.elapsed() + interval > max {
                return Ok(Outcome::Fail(format!(
                    "not stable within {} ({} readings within the band needed)",
                    humantime::format_duration(max),
                    n
                )));
            }
            self.sleep(interval).await?;
        }
    }
}

/// Aggregate samples; any invalid sample makes the result invalid (`None`).
pub fn aggregate(samples: &[Option<f64>], how: Aggregate) -> Option<f64> {
    let v: Vec<f64> = samples.iter().copied().collect::<Option<Vec<f64>>>()?;
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    Some(match how {
        Aggregate::Mean => mean,
        Aggregate::Min => v.iter().copied().fold(f64::INFINITY, f64::min),
        Aggregate::Max => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Aggregate::Last => *v.last()?,
        Aggregate::Stddev => {
            if v.len() < 2 {
                0.0
            } else {
                (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregations() {
        let s = [Some(1.0), Some(2.0), Some(3.0), Some(6.0)];
        assert_eq!(aggregate(&s, Aggregate::Mean), Some(3.0));
        assert_eq!(aggregate(&s, Aggregate::Min), Some(1.0));
        assert_eq!(aggregate(&s, Aggregate::Max), Some(6.0));
        assert_eq!(aggregate(&s, Aggregate::Last), Some(6.0));
        let sd = aggregate(&s, Aggregate::Stddev).unwrap();
        assert!((sd - 2.160_246_899).abs() < 1e-6, "{sd}");
        assert_eq!(aggregate(&[Some(1.0), None], Aggregate::Mean), None);
    }
}
