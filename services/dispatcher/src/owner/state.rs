//! A shard's live state: a pure fold of its log partition. No I/O and no clock: time comes
//! from the events (and, for eviction, from the caller).
//!
//! It holds every execution that is not terminal (and a bounded cache of terminal ones), the
//! commands, things, device credentials, groups and rollouts the shard owns, the client tokens of recent starts, the timers (execution
//! deadlines, scheduled command deletions), the trace each execution started under, and the
//! payloads of executions still CREATED (a new owner delivers those again).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use fleetcmd_domain::ca::{self, CaCertificate};
use fleetcmd_domain::command;
use fleetcmd_domain::credential::{self, Credentials};
use fleetcmd_domain::event::{Aggregate, Event, EventEnvelope, ShardSnapshot, SnapshotToken};
use fleetcmd_domain::execution::{self, Folded};
use fleetcmd_domain::group::{self, ThingGroup};
use fleetcmd_domain::ids::{ExecutionId, Target, TargetKind};
use fleetcmd_domain::model::{Command, Execution, ExecutionStatus, Payload, TimestampMs};
use fleetcmd_domain::rollout::{self, Rollout, RolloutId, RolloutSummary};
use fleetcmd_domain::start::PriorStart;
use fleetcmd_domain::thing::{self, Thing};

use super::pending::Pending;

/// What a timer is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKey {
    /// The execution's deadline: the cloud TIMED_OUT.
    Execution(ExecutionId),
    /// A command's scheduled deletion.
    CommandDeletion(String),
    /// A hosted rollout's next plan (armed by the owner's loop, not by the fold).
    Rollout(RolloutId),
}

/// A client token the owner still holds in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub fingerprint: u64,
    pub execution_id: ExecutionId,
    /// Until when the token is kept in memory.
    pub memory_until: TimestampMs,
    /// Offset of the start's record: the token leaves memory only once the read model has it.
    pub offset: u64,
}

/// The key of a client token: tokens are scoped to their target.
pub type TokenKey = (Target, String);

/// A shard's live state, folded from its log partition.
#[derive(Debug, Default, Clone)]
pub struct ShardState {
    executions: HashMap<ExecutionId, Execution>,
    /// Offset of the record of each in-memory execution's last event (eviction waits until
    /// the read model has it).
    last_offsets: HashMap<ExecutionId, u64>,
    terminal_order: VecDeque<ExecutionId>,
    tokens: HashMap<TokenKey, TokenEntry>,
    token_order: VecDeque<(TokenKey, TimestampMs)>,
    /// How long a token stays in memory after its start, in ms.
    token_memory_ms: i64,
    /// The shard's commands and the sequence number of each one's last event.
    commands: HashMap<String, (Command, u64)>,
    /// The shard's registered things and the sequence number of each one's last event.
    things: HashMap<String, (Thing, u64)>,
    /// The credentials of the shard's owners (things and bare clients); each one's version
    /// is the sequence number of its last event.
    credentials: HashMap<Target, Credentials>,
    /// The shard's registered CA certificates (each carries its version).
    cas: HashMap<String, CaCertificate>,
    /// The shard's thing groups (each carries its version).
    groups: HashMap<String, ThingGroup>,
    /// The rollouts the shard hosts and the sequence number of each one's last event.
    rollouts: HashMap<RolloutId, (Rollout, u64)>,
    /// The earliest plan armed for each rollout, so a rollout holds one timer at a time.
    rollout_wakes: HashMap<RolloutId, TimestampMs>,
    timers: BinaryHeap<Reverse<(TimestampMs, TimerKey)>>,
    /// The offset the next record appended to the partition gets.
    next_offset: u64,
    /// The `traceparent` each traced execution started under: later inputs (device updates,
    /// timeouts, cancels) join that trace, so one execution is one trace.
    traces: HashMap<ExecutionId, String>,
    /// The executions still CREATED, with their payloads: delivered again when their device
    /// subscribes, and by a new owner after a rebuild.
    undelivered: Pending,
    /// Each target's live executions (CREATED or IN_PROGRESS), in start order: a target's
    /// in-flight limit lets only the first ones of it reach the device.
    live: HashMap<Target, Vec<ExecutionId>>,
}

impl ShardState {
    /// An empty state whose client tokens stay in memory `token_memory_ms` after their start.
    pub fn new(token_memory_ms: i64) -> Self {
        Self {
            token_memory_ms,
            ..Self::default()
        }
    }

    pub fn execution(&self, id: &ExecutionId) -> Option<&Execution> {
        self.executions.get(id)
    }

    pub fn command(&self, id: &str) -> Option<&Command> {
        self.commands.get(id).map(|(c, _)| c)
    }

    /// The sequence number of a command's last event (0 when unknown).
    pub fn command_seq(&self, id: &str) -> u64 {
        self.commands.get(id).map_or(0, |(_, s)| *s)
    }

    pub fn thing(&self, name: &str) -> Option<&Thing> {
        self.things.get(name).map(|(t, _)| t)
    }

    /// The sequence number of a thing's last event (0 when unknown).
    pub fn thing_seq(&self, name: &str) -> u64 {
        self.things.get(name).map_or(0, |(_, s)| *s)
    }

    pub fn credentials(&self, owner: &Target) -> Option<&Credentials> {
        self.credentials.get(owner)
    }

    pub fn ca(&self, ca_certificate_id: &str) -> Option<&CaCertificate> {
        self.cas.get(ca_certificate_id)
    }

    pub fn group(&self, name: &str) -> Option<&ThingGroup> {
        self.groups.get(name)
    }

    pub fn rollout(&self, id: &RolloutId) -> Option<&Rollout> {
        self.rollouts.get(id).map(|(r, _)| r)
    }

    /// The sequence number the next event of `aggregate` gets: one past its last event's.
    pub fn next_seq(&self, aggregate: &Aggregate) -> u64 {
        let last = match aggregate {
            Aggregate::Execution { execution_id, .. } => {
                self.execution(execution_id).map_or(0, |e| e.seq)
            }
            Aggregate::Command(id) => self.command_seq(id.as_str()),
            Aggregate::Thing(name) => self.thing_seq(name),
            Aggregate::Credential(owner) => self.credentials(owner).map_or(0, |c| c.version),
            Aggregate::Ca(id) => self.ca(id).map_or(0, |c| c.version),
            Aggregate::Group(name) => self.group(name).map_or(0, |g| g.version),
            Aggregate::Rollout(id) => self.rollouts.get(id).map_or(0, |(_, seq)| *seq),
        };
        last + 1
    }

    /// The start a client token of `target` was used for, while the token is in memory.
    pub fn token(&self, key: &TokenKey) -> Option<PriorStart> {
        self.tokens.get(key).map(|t| PriorStart {
            execution_id: t.execution_id.clone(),
            fingerprint: t.fingerprint,
            valid_until: None,
        })
    }

    pub fn holds_token(&self, key: &TokenKey) -> bool {
        self.tokens.contains_key(key)
    }

    pub fn trace(&self, id: &ExecutionId) -> Option<&str> {
        self.traces.get(id).map(String::as_str)
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Executions in memory (live and cached terminal ones).
    pub fn len(&self) -> usize {
        self.executions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.executions.is_empty()
    }

    /// The executions still CREATED, not past `now`, with their payloads: what a new owner
    /// delivers again.
    pub fn undelivered(&self, now: TimestampMs) -> impl Iterator<Item = (&Execution, &Payload)> {
        self.undelivered
            .iter()
            .filter_map(move |(id, payload)| self.waiting(id, payload, now))
    }

    /// The executions of `target` still CREATED, not past `now`, with their payloads, in
    /// start order: what its device gets when it subscribes.
    pub fn undelivered_of(
        &self,
        target: &Target,
        now: TimestampMs,
    ) -> impl Iterator<Item = (&Execution, &Payload)> {
        self.undelivered
            .of_target(target)
            .iter()
            .filter_map(move |id| self.waiting(id, self.undelivered.payload(id)?, now))
    }

    /// The most executions of `target` that may be with its device at once: its thing's
    /// `max_in_flight`, else `default`; `None`: no limit.
    pub fn in_flight_limit(&self, target: &Target, default: Option<u32>) -> Option<usize> {
        let own = match target.kind {
            TargetKind::Thing => self.thing(&target.id).and_then(|t| t.max_in_flight),
            TargetKind::Client => None,
        };
        own.or(default)
            .filter(|n| *n > 0)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Whether `e` may reach its device now: it is among the first `limit` live executions
    /// of its target.
    pub fn within_limit(&self, e: &Execution, limit: Option<usize>) -> bool {
        let Some(limit) = limit else { return true };
        self.live
            .get(&e.target)
            .is_some_and(|ids| ids.iter().take(limit).any(|id| *id == e.execution_id))
    }

    /// The live executions of `target` that its in-flight limit lets through, in start
    /// order (all of them without a limit).
    pub fn in_flight_window(&self, target: &Target, limit: Option<usize>) -> &[ExecutionId] {
        let ids = self.live.get(target).map_or(&[][..], Vec::as_slice);
        &ids[..limit.unwrap_or(usize::MAX).min(ids.len())]
    }

    /// The execution `id` with its payload while it waits for its device (CREATED, not past
    /// `now`).
    pub fn waiting_execution(
        &self,
        id: &ExecutionId,
        now: TimestampMs,
    ) -> Option<(&Execution, &Payload)> {
        self.waiting(id, self.undelivered.payload(id)?, now)
    }

    fn waiting<'a>(
        &'a self,
        id: &ExecutionId,
        payload: &'a Payload,
        now: TimestampMs,
    ) -> Option<(&'a Execution, &'a Payload)> {
        let e = self.executions.get(id)?;
        (e.status == ExecutionStatus::Created && e.deadline() > now).then_some((e, payload))
    }

    /// When the next timer fires.
    pub fn next_timer(&self) -> Option<TimestampMs> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the timers due at `now`, earliest first.
    pub fn take_due_timers(&mut self, now: TimestampMs) -> Vec<TimerKey> {
        let mut due = Vec::new();
        while self
            .timers
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            if let Some(Reverse((_, key))) = self.timers.pop() {
                if let TimerKey::Rollout(id) = &key {
                    self.rollout_wakes.remove(id);
                }
                due.push(key);
            }
        }
        due
    }

    /// Plans rollout `id` again at `at`, unless a plan at or before `at` is armed already.
    pub fn arm_rollout(&mut self, id: &RolloutId, at: TimestampMs) {
        if self.rollout_wakes.get(id).is_some_and(|&armed| armed <= at) {
            return;
        }
        self.rollout_wakes.insert(id.clone(), at);
        self.timers
            .push(Reverse((at, TimerKey::Rollout(id.clone()))));
    }

    /// Every hosted rollout's summary, by id.
    pub fn rollout_summaries(&self) -> Vec<RolloutSummary> {
        let mut all: Vec<RolloutSummary> =
            self.rollouts.values().map(|(r, _)| r.summary()).collect();
        all.sort_by(|a, b| a.rollout_id.cmp(&b.rollout_id));
        all
    }

    /// The hosted rollouts that still have something to do (not ended, or ended with
    /// attempts in flight), by id.
    pub fn live_rollouts(&self) -> Vec<RolloutId> {
        let mut ids: Vec<RolloutId> = self
            .rollouts
            .iter()
            .filter(|(_, (r, _))| !r.status().is_terminal() || r.counts().in_flight > 0)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Adds an execution read back from the read model (a terminal one the owner had
    /// evicted), so later inputs fold onto it.
    pub fn hydrate(&mut self, execution: Execution) {
        if execution.terminal && !self.executions.contains_key(&execution.execution_id) {
            self.terminal_order
                .push_back(execution.execution_id.clone());
            self.executions
                .insert(execution.execution_id.clone(), execution);
        }
    }

    /// Folds the events of one log record, at `offset`, into the state.
    pub fn apply_record(&mut self, events: &[EventEnvelope], offset: u64) {
        for env in events {
            self.apply(env, offset);
        }
        self.next_offset = self.next_offset.max(offset + 1);
    }

    /// Folds one event whose record is (or will be) at `offset`.
    pub fn apply(&mut self, env: &EventEnvelope, offset: u64) {
        match &env.aggregate {
            Aggregate::Execution { execution_id, .. } => {
                self.apply_execution(execution_id, env, offset)
            }
            Aggregate::Command(id) => {
                let key = id.as_str().to_string();
                let mut state = self.commands.remove(&key).map(|(c, _)| c);
                command::apply(&mut state, &env.event, env.at);
                if let Some(c) = state {
                    if let Event::CommandDeletionScheduled { delete_at } = &env.event {
                        self.timers.push(Reverse((
                            *delete_at,
                            TimerKey::CommandDeletion(key.clone()),
                        )));
                    }
                    self.commands.insert(key, (c, env.seq));
                }
            }
            Aggregate::Thing(name) => {
                if let Event::Thing { event } = &env.event {
                    let mut state = self.things.remove(name).map(|(t, _)| t);
                    thing::apply(&mut state, event, env.at);
                    if let Some(t) = state {
                        self.things.insert(name.clone(), (t, env.seq));
                    }
                }
            }
            Aggregate::Credential(owner) => {
                if let Event::Credential { event } = &env.event {
                    let mut state = self.credentials.remove(owner);
                    credential::apply(owner, &mut state, event, env.at);
                    if let Some(mut c) = state {
                        c.version = env.seq;
                        self.credentials.insert(owner.clone(), c);
                    }
                }
            }
            Aggregate::Ca(id) => {
                if let Event::Ca { event } = &env.event {
                    let mut state = self.cas.remove(id);
                    ca::fold(&mut state, event, env.seq);
                    if let Some(c) = state {
                        self.cas.insert(id.clone(), c);
                    }
                }
            }
            Aggregate::Group(name) => {
                if let Event::Group { event } = &env.event {
                    let mut state = self.groups.remove(name);
                    group::fold(&mut state, event, env.seq);
                    if let Some(g) = state {
                        self.groups.insert(name.clone(), g);
                    }
                }
            }
            Aggregate::Rollout(id) => {
                if let Event::Rollout { event } = &env.event {
                    let mut state = self.rollouts.remove(id).map(|(r, _)| r);
                    rollout::apply(&mut state, event, env.at);
                    if let Some(r) = state {
                        self.rollouts.insert(id.clone(), (r, env.seq));
                    }
                }
            }
        }
    }

    fn apply_execution(&mut self, id: &ExecutionId, env: &EventEnvelope, offset: u64) {
        let mut slot = self.executions.remove(id);
        let was_terminal = slot.as_ref().is_some_and(|e| e.terminal);
        // Only a delete loses the record, and with it the target the live list is kept by.
        let deleted_target = matches!(env.event, Event::ExecutionDeleted)
            .then(|| slot.as_ref().map(|e| e.target.clone()))
            .flatten();
        match execution::fold(&mut slot, &env.event, env.at, env.seq) {
            Folded::Unchanged => {}
            Folded::Deleted => {
                self.last_offsets.remove(id);
                self.traces.remove(id);
                self.undelivered.remove(id);
                if let Some(target) = &deleted_target {
                    self.leave_live(target, id);
                }
            }
            Folded::Applied => {
                self.last_offsets.insert(id.clone(), offset);
                match &env.event {
                    Event::ExecutionStarted {
                        execution,
                        payload,
                        request_fingerprint,
                    } => self.started(execution, payload, *request_fingerprint, env, offset),
                    // Any status change means the device got it, or it no longer matters.
                    _ => {
                        self.undelivered.remove(id);
                        if let Some(e) = &slot
                            && !matches!(
                                e.status,
                                ExecutionStatus::Created | ExecutionStatus::InProgress
                            )
                        {
                            self.leave_live(&e.target, id);
                        }
                    }
                }
                if let Some(e) = &slot
                    && e.terminal
                    && !was_terminal
                {
                    self.terminal_order.push_back(id.clone());
                }
            }
        }
        if let Some(e) = slot {
            self.executions.insert(id.clone(), e);
        }
    }

    fn started(
        &mut self,
        e: &Execution,
        payload: &Payload,
        fingerprint: u64,
        env: &EventEnvelope,
        offset: u64,
    ) {
        let id = &e.execution_id;
        self.timers
            .push(Reverse((e.deadline(), TimerKey::Execution(id.clone()))));
        if let Some(token) = &e.client_token {
            let key = (e.target.clone(), token.clone());
            let memory_until = env.at.saturating_add(self.token_memory_ms);
            self.tokens.insert(
                key.clone(),
                TokenEntry {
                    fingerprint,
                    execution_id: id.clone(),
                    memory_until,
                    offset,
                },
            );
            self.token_order.push_back((key, memory_until));
        }
        if let Some(trace) = &env.trace {
            self.traces.insert(id.clone(), trace.clone());
        }
        self.undelivered.insert(&e.target, id, payload);
        match self.live.get_mut(&e.target) {
            Some(ids) => ids.push(id.clone()),
            None => {
                self.live.insert(e.target.clone(), vec![id.clone()]);
            }
        }
    }

    fn leave_live(&mut self, target: &Target, id: &ExecutionId) {
        if let Some(ids) = self.live.get_mut(target) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.live.remove(target);
            }
        }
    }

    /// Records that `records` records were appended from offset `first` on. Inputs are
    /// staged at provisional offsets (`next_offset`, `next_offset + 1`, ...: one record per
    /// input, in order); the owner checks that the append landed at `next_offset`, so those
    /// offsets are the real ones.
    pub fn appended(&mut self, first: u64, records: u64) {
        self.next_offset = first + records;
    }

    /// Drops terminal executions beyond `cache` whose last event the read model already has
    /// (`projected`: its next offset to read; they can be read back), and client tokens past
    /// their time in memory whose start is projected.
    pub fn evict(&mut self, cache: usize, projected: u64, now: TimestampMs) {
        while self.terminal_order.len() > cache {
            let Some(id) = self.terminal_order.front() else {
                break;
            };
            if self.last_offsets.get(id).is_some_and(|o| *o >= projected) {
                break;
            }
            let id = self.terminal_order.pop_front().expect("front exists");
            if self.executions.get(&id).is_some_and(|e| e.terminal) {
                self.executions.remove(&id);
                self.last_offsets.remove(&id);
                self.traces.remove(&id);
            }
        }
        // Tokens leave memory in start order once their time is up and the read model has
        // their start; later retries find them there.
        while let Some((key, memory_until)) = self.token_order.front() {
            if *memory_until > now {
                break;
            }
            // A newer start with the same token replaced the entry: this one is stale.
            let current = self
                .tokens
                .get(key)
                .filter(|t| t.memory_until == *memory_until);
            if current.is_some_and(|t| t.offset >= projected) {
                break;
            }
            let (key, _) = self.token_order.pop_front().expect("front exists");
            if current.is_some() {
                self.tokens.remove(&key);
            }
        }
    }

    /// The executions that are not terminal, sorted by id: what every rebuild of the same
    /// log must agree on.
    pub fn live(&self) -> Vec<&Execution> {
        let mut live: Vec<&Execution> = self.executions.values().filter(|e| !e.terminal).collect();
        live.sort_by(|a, b| a.execution_id.cmp(&b.execution_id));
        live
    }

    /// The state as a snapshot at [`ShardState::next_offset`], in a stable order (so two
    /// equal states give equal snapshots).
    pub fn to_snapshot(&self) -> ShardSnapshot {
        let mut executions: Vec<(Execution, u64)> = self
            .executions
            .values()
            .map(|e| {
                let offset = self.last_offsets.get(&e.execution_id).copied().unwrap_or(0);
                (e.clone(), offset)
            })
            .collect();
        executions.sort_by(|a, b| a.0.execution_id.cmp(&b.0.execution_id));
        let mut undelivered: Vec<(ExecutionId, Payload)> = self
            .undelivered
            .iter()
            .map(|(id, p)| (id.clone(), p.clone()))
            .collect();
        undelivered.sort_by(|a, b| a.0.cmp(&b.0));
        let mut traces: Vec<(ExecutionId, String)> = self
            .traces
            .iter()
            .map(|(id, t)| (id.clone(), t.clone()))
            .collect();
        traces.sort();
        let mut tokens: Vec<SnapshotToken> = self
            .tokens
            .iter()
            .map(|((target, token), t)| SnapshotToken {
                target: target.clone(),
                token: token.clone(),
                execution_id: t.execution_id.clone(),
                fingerprint: t.fingerprint,
                memory_until: t.memory_until,
                offset: t.offset,
            })
            .collect();
        tokens.sort_by(|a, b| (&a.target, &a.token).cmp(&(&b.target, &b.token)));
        let mut commands: Vec<(Command, u64)> = self.commands.values().cloned().collect();
        commands.sort_by(|a, b| a.0.command_id.cmp(&b.0.command_id));
        let mut things: Vec<(Thing, u64)> = self.things.values().cloned().collect();
        things.sort_by(|a, b| a.0.thing_name.cmp(&b.0.thing_name));
        let mut credentials: Vec<Credentials> = self.credentials.values().cloned().collect();
        credentials.sort_by(|a, b| a.owner.cmp(&b.owner));
        let mut cas: Vec<CaCertificate> = self.cas.values().cloned().collect();
        cas.sort_by(|a, b| a.ca_certificate_id.cmp(&b.ca_certificate_id));
        let mut groups: Vec<ThingGroup> = self.groups.values().cloned().collect();
        groups.sort_by(|a, b| a.thing_group_name.cmp(&b.thing_group_name));
        let mut rollouts: Vec<(Rollout, u64)> = self.rollouts.values().cloned().collect();
        rollouts.sort_by(|a, b| a.0.rollout_id().cmp(b.0.rollout_id()));
        ShardSnapshot {
            next_offset: self.next_offset,
            executions,
            undelivered,
            traces,
            tokens,
            commands,
            things,
            credentials,
            cas,
            groups,
            rollouts,
        }
    }

    /// The state a snapshot describes: timers, eviction and token orders are derived again
    /// (deadlines of the executions that are not terminal, scheduled command deletions;
    /// terminal executions in the order of their last event, tokens by their memory time).
    pub fn from_snapshot(snapshot: ShardSnapshot, token_memory_ms: i64) -> Self {
        let mut state = Self::new(token_memory_ms);
        state.next_offset = snapshot.next_offset;
        let mut terminal: Vec<(u64, ExecutionId)> = Vec::new();
        for (e, offset) in snapshot.executions {
            let id = e.execution_id.clone();
            if e.terminal {
                terminal.push((offset, id.clone()));
            } else {
                state
                    .timers
                    .push(Reverse((e.deadline(), TimerKey::Execution(id.clone()))));
            }
            state.last_offsets.insert(id.clone(), offset);
            state.executions.insert(id, e);
        }
        terminal.sort();
        state.terminal_order = terminal.into_iter().map(|(_, id)| id).collect();
        // In start order, as the log had them: the snapshot lists them by id.
        let mut undelivered: Vec<(&Execution, ExecutionId, Payload)> = snapshot
            .undelivered
            .into_iter()
            .filter_map(|(id, p)| Some((state.executions.get(&id)?, id, p)))
            .collect();
        undelivered.sort_by_key(|(e, ..)| (e.started_at, state.last_offsets.get(&e.execution_id)));
        let mut pending = Pending::default();
        for (e, id, payload) in &undelivered {
            pending.insert(&e.target, id, payload);
        }
        drop(undelivered);
        state.undelivered = pending;
        let mut live: Vec<&Execution> = state
            .executions
            .values()
            .filter(|e| {
                matches!(
                    e.status,
                    ExecutionStatus::Created | ExecutionStatus::InProgress
                )
            })
            .collect();
        live.sort_by_key(|e| (e.started_at, state.last_offsets.get(&e.execution_id)));
        let mut by_target: HashMap<Target, Vec<ExecutionId>> = HashMap::new();
        for e in live {
            by_target
                .entry(e.target.clone())
                .or_default()
                .push(e.execution_id.clone());
        }
        state.live = by_target;
        state.traces = snapshot.traces.into_iter().collect();
        let mut order: Vec<(TokenKey, TimestampMs)> = Vec::new();
        for t in snapshot.tokens {
            let key = (t.target, t.token);
            order.push((key.clone(), t.memory_until));
            state.tokens.insert(
                key,
                TokenEntry {
                    fingerprint: t.fingerprint,
                    execution_id: t.execution_id,
                    memory_until: t.memory_until,
                    offset: t.offset,
                },
            );
        }
        order.sort_by_key(|(_, until)| *until);
        state.token_order = order.into();
        for (c, seq) in snapshot.commands {
            let key = c.command_id.as_str().to_string();
            if let Some(delete_at) = c.delete_at {
                state
                    .timers
                    .push(Reverse((delete_at, TimerKey::CommandDeletion(key.clone()))));
            }
            state.commands.insert(key, (c, seq));
        }
        state.things = snapshot
            .things
            .into_iter()
            .map(|(t, seq)| (t.thing_name.clone(), (t, seq)))
            .collect();
        state.credentials = snapshot
            .credentials
            .into_iter()
            .map(|c| (c.owner.clone(), c))
            .collect();
        state.cas = snapshot
            .cas
            .into_iter()
            .map(|c| (c.ca_certificate_id.clone(), c))
            .collect();
        state.groups = snapshot
            .groups
            .into_iter()
            .map(|g| (g.thing_group_name.clone(), g))
            .collect();
        state.rollouts = snapshot
            .rollouts
            .into_iter()
            .map(|(r, seq)| (r.rollout_id().clone(), (r, seq)))
            .collect();
        state
    }
}
