//! One Raft group as the rest of Cairn sees it: [`Group`] wraps openraft's `Raft` and the
//! group's replica behind calls that speak Cairn's terms (node ids, log indexes, typed
//! errors), so openraft's API (an alpha) is spoken in this crate only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::LinearizerOption;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::impls::ProgressResponder;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::raft::ReadPolicy;
use parking_lot::RwLock;

use crate::LogStore;
use crate::network::GroupNetwork;
use crate::state_machine::StateMachine;
use crate::types::{NodeAddr, Request, TypeConfig};

/// openraft's Raft handle for a Cairn group.
pub type GroupRaft = openraft::Raft<TypeConfig, StateMachine>;

/// What a group is doing on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Stopped,
}

/// A group's state on this node, for routing, status and metrics.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    /// This node's id.
    pub node: u64,
    pub role: Role,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    pub snapshot: Option<u64>,
    pub purged: Option<u64>,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Addresses of the group's members, as its membership records them.
    pub nodes: BTreeMap<u64, NodeAddr>,
    /// Why the group stopped, if it did (a storage failure stops it for good).
    pub stopped: Option<String>,
}

/// A term this node leads: proposals carry it and are refused once the term is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderTerm(LeaderId<u64, u64>);

impl LeaderTerm {
    pub fn term(&self) -> u64 {
        self.0.term
    }
}

/// Why a proposal did not (or may not have) become a committed entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Refused before it was appended: nothing happened.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// Appended, then the leader changed before it was known to be committed.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The group stopped (shut down, or a storage failure).
    #[error("group stopped: {0}")]
    Stopped(String),
}

/// Why a change of the group (bootstrap, membership, leadership, snapshot, purge) or a wait
/// on it did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// This node does not lead the group; the leader when known.
    #[error("this node does not lead the group (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// What was waited for did not happen in time (it may still happen).
    #[error("{what}: not within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    /// The group stopped (shut down, or a storage failure).
    #[error("group stopped: {0}")]
    Stopped(String),
    /// The group refused the request as it stands (a conflicting or invalid change, a group
    /// already initialised).
    #[error("refused: {0}")]
    Refused(String),
}

impl GroupError {
    fn stopped(fatal: &impl std::fmt::Display) -> GroupError {
        GroupError::Stopped(fatal.to_string())
    }

    /// A membership change's refusal, by kind.
    fn of_write(
        e: openraft::errors::RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> GroupError {
        match e {
            openraft::errors::RaftError::Fatal(f) => GroupError::stopped(&f),
            openraft::errors::RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                GroupError::NotLeader {
                    leader: f.leader_id,
                }
            }
            openraft::errors::RaftError::APIError(other) => GroupError::Refused(other.to_string()),
        }
    }
}

/// A group hosted on this node: its Raft and its replica.
#[derive(Clone)]
pub struct Group {
    pub raft: GroupRaft,
    pub sm: StateMachine,
    /// Times this node saw the group's leader change (to another node or to none).
    leader_changes: Arc<std::sync::atomic::AtomicU64>,
    /// [`Lead`] as last seen in the group's server metrics, kept by the task that watches
    /// them, so the read path checks leadership with one atomic load.
    lead: Arc<std::sync::atomic::AtomicU8>,
    /// The term in which this node last asked to hand its leadership over (0: never). A
    /// transfer makes the voters stop honouring the leader's lease for the rest of that term
    /// (openraft disables it so that the target can be elected at once), so for the rest of
    /// it reads confirm leadership with a quorum round instead of the lease. A term number is
    /// enough: a read compares it only while this node leads, and this node leads a term at
    /// most once.
    transferred_in: Arc<std::sync::atomic::AtomicU64>,
    /// The leader lease: openraft makes it the election timeout's upper bound.
    lease: Duration,
    /// Until when this replica neither grants votes nor stands for election (see
    /// [`Group::voting_embargoed`]).
    embargo_until: std::time::Instant,
    /// Reads confirmed from the metrics alone, without a message to the Raft core.
    lease_reads_local: Arc<std::sync::atomic::AtomicU64>,
    /// When this replica last took an append (entries or heartbeat) from a leader it
    /// accepts, for [`Group::in_touch`].
    heard: Arc<Heard>,
    /// When a leader last sent this replica an append or a snapshot it took (whether or not
    /// that leader is in touch): the leader counts it as a member. Unlike `heard`, a change
    /// of role, leader or vote does not count.
    leader_sent: Arc<Heard>,
    /// Set while this replica leads out of touch: its appends say so, and its followers do
    /// not count them as touch (a leader deposed by a majority it cannot reach keeps
    /// heartbeating the followers on its side).
    leader_out_of_touch: Arc<std::sync::atomic::AtomicBool>,
    /// This replica votes only once its log names it a member (see
    /// [`Group::vote_only_as_member`]).
    votes_need_membership: Arc<std::sync::atomic::AtomicBool>,
    /// For a replica created again after a removal: it stands and votes only once its
    /// membership is past this ([`MembershipFloor`]).
    floor: Option<MembershipFloor>,
}

/// When a follower last heard its leader: milliseconds after `born` (one atomic store per
/// accepted append, on the peer service's path).
#[derive(Debug)]
struct Heard {
    born: std::time::Instant,
    ms: std::sync::atomic::AtomicU64,
}

impl Heard {
    fn new() -> Heard {
        Heard {
            born: std::time::Instant::now(),
            ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.ms.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn since(&self) -> Duration {
        let at = Duration::from_millis(self.ms.load(std::sync::atomic::Ordering::Relaxed));
        self.born.elapsed().saturating_sub(at)
    }
}

/// Whether this node leads its group, as the read path needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// Another node leads, or none does.
    No,
    /// This node leads, with other voters: a read must confirm the lease.
    WithOthers,
    /// This node leads and is the only voter: no other node can be elected.
    Alone,
}

impl Lead {
    fn of(m: &openraft::metrics::RaftServerMetrics<TypeConfig>) -> Lead {
        if m.state != ServerState::Leader || m.current_leader != Some(m.id) {
            return Lead::No;
        }
        if sole_voter(&m.membership_config, m.id) {
            Lead::Alone
        } else {
            Lead::WithOthers
        }
    }

    fn to_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> Lead {
        match v {
            2 => Lead::Alone,
            1 => Lead::WithOthers,
            _ => Lead::No,
        }
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").finish_non_exhaustive()
    }
}

/// Whether the group's metrics alone show that a read of this replica now is linearizable, as
/// the leader lease allows, without a message to the group's Raft core:
/// - this node leads, in a term whose vote a quorum granted;
/// - an entry of this term is applied, so every entry of earlier terms is applied (a write
///   this leader acknowledged was applied before it was acknowledged);
/// - no membership change is under way, and this node is a voter (openraft hands a removed
///   leader's leadership over by itself, a transfer the caller does not know of);
/// - a quorum acknowledged an append or heartbeat that this node *sent* less than `lease`
///   ago: each of those voters then refuses to vote for another node until at least `lease`
///   after that send, and any new leader needs one of them, so no other leader can exist yet
///   (openraft's own lease check, which this repeats on a snapshot of the same state).
///
/// The metrics are a snapshot a moment old, which only errs towards `false`: an older
/// acknowledgement, a leadership this node held a moment ago but that cannot have been taken
/// from it while the lease holds (a transfer, which ends the lease early, is handled by the
/// caller).
pub fn lease_read_ready(m: &openraft::RaftMetrics<TypeConfig>, lease: Duration) -> bool {
    use openraft::Instant as _;
    m.state == ServerState::Leader
        && m.current_leader == Some(m.id)
        && m.vote.committed
        && m.last_applied
            .as_ref()
            .is_some_and(|applied| applied.leader_id == m.vote.leader_id)
        && m.membership_config.log_id() == m.committed_membership_config.log_id()
        && m.membership_config
            .membership()
            .get_joint_config()
            .iter()
            .all(|voters| voters.contains(&m.id))
        && m.last_quorum_acked
            .as_ref()
            .is_some_and(|acked| (**acked).elapsed() < lease)
}

/// Whether `node` is the only voter of `membership` (in every config of a joint one); an
/// empty membership (a group not yet initialised) has no sole voter.
fn sole_voter(
    membership: &openraft::StoredMembership<LeaderId<u64, u64>, u64, NodeAddr>,
    node: u64,
) -> bool {
    let configs = membership.membership().get_joint_config();
    !configs.is_empty()
        && configs
            .iter()
            .all(|voters| voters.len() == 1 && voters.contains(&node))
}

/// The membership that dropped this node from a group, for a replica created again after
/// that removal: as (term of the leader that reported it, log index of the membership).
///
/// A replica created again starts empty and catches up from a snapshot, whose membership is
/// the one of the snapshot's last entry, possibly from long before the removal, and then from
/// the log after it. Until the log arrives, that old membership is the replica's newest: if it
/// names this node as a voter (every group starts with its first node alone), the replica
/// would elect itself with its own vote and commit beside the group's real leader. So such a
/// replica stands for election, and votes, only once the newest membership it knows is past
/// the floor: from a term no older than the removal's and at a later index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MembershipFloor {
    pub term: u64,
    pub index: u64,
}

impl MembershipFloor {
    /// Whether `membership` (a replica's newest) was appended after the removal.
    fn passed_by(
        self,
        membership: &openraft::StoredMembership<LeaderId<u64, u64>, u64, NodeAddr>,
    ) -> bool {
        membership
            .log_id()
            .as_ref()
            .is_some_and(|id| id.leader_id.term >= self.term && id.index > self.index)
    }
}

fn role(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Stopped,
    }
}

impl Group {
    /// Starts group `id`'s Raft on this node over `log` and `sm`, talking through `network`.
    pub async fn start(
        node: u64,
        config: Arc<openraft::Config>,
        network: GroupNetwork,
        log: LogStore,
        sm: StateMachine,
    ) -> Result<Group, GroupError> {
        Group::start_with(node, config, network, log, sm, false, None).await
    }

    /// [`Group::start`] for a replica created again after a removal: it stands for election
    /// and votes only once its membership is past `floor` ([`MembershipFloor`]).
    pub async fn start_past(
        node: u64,
        config: Arc<openraft::Config>,
        network: GroupNetwork,
        log: LogStore,
        sm: StateMachine,
        floor: MembershipFloor,
    ) -> Result<Group, GroupError> {
        Group::start_with(node, config, network, log, sm, false, Some(floor)).await
    }

    /// Starts a group that a split created just now on this node ([`crate::split`]): its
    /// replica never granted a lease to anyone, so it votes and stands at once.
    pub async fn start_split(
        node: u64,
        config: Arc<openraft::Config>,
        network: GroupNetwork,
        log: LogStore,
        sm: StateMachine,
    ) -> Result<Group, GroupError> {
        Group::start_with(node, config, network, log, sm, true, None).await
    }

    async fn start_with(
        node: u64,
        config: Arc<openraft::Config>,
        network: GroupNetwork,
        log: LogStore,
        sm: StateMachine,
        fresh: bool,
        floor: Option<MembershipFloor>,
    ) -> Result<Group, GroupError> {
        let lease = Duration::from_millis(config.election_timeout_max);
        // A replica forgets on restart the lease it may have granted a leader just before
        // (openraft loads the vote without one), so for one lease it neither votes nor stands:
        // a leader it acknowledged may still be reading on that acknowledgement. A sole voter
        // granted no lease to anyone and starts at once. Elections are off from the start
        // (whether the replica is a sole voter is known only once its state is loaded), so
        // no tick can campaign before the embargo is in place.
        let config = Arc::new(openraft::Config {
            enable_elect: false,
            ..(*config).clone()
        });
        let leader_out_of_touch = network.leader_out_of_touch();
        let raft = GroupRaft::new(node, config, network, log, sm.clone())
            .await
            .map_err(|e| GroupError::stopped(&e))?;
        // Past the floor, if there is one (see [`MembershipFloor`]).
        let past_floor =
            move |m: &openraft::StoredMembership<LeaderId<u64, u64>, u64, NodeAddr>| {
                floor.is_none_or(|f| f.passed_by(m))
            };
        let alone = fresh || {
            let m = raft.metrics().borrow_watched().membership_config.clone();
            sole_voter(&m, node) && past_floor(&m)
        };
        let embargo_until = std::time::Instant::now() + if alone { Duration::ZERO } else { lease };
        // Elections may start at once alone, else after the lease. With a floor, the metrics
        // task below is the one writer of the switch: on at the lease's end only if the
        // membership is past the floor, and from then on as the membership changes (two
        // writers could leave a stale "off" last on a quiet follower).
        if alone {
            raft.runtime_config().elect(true);
        } else if floor.is_none() {
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(lease).await;
                raft.runtime_config().elect(true);
            });
        }
        let leader_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let lead = Arc::new(std::sync::atomic::AtomicU8::new(Lead::No.to_u8()));
        // Server metrics change only on votes, roles, leaders and membership (not per entry),
        // so watching them costs nothing on the write path. The task ends with the group.
        let mut server = raft.server_metrics();
        let counter = leader_changes.clone();
        let lead_seen = lead.clone();
        let heard = Arc::new(Heard::new());
        let heard_change = heard.clone();
        let elect_raft = raft.clone();
        tokio::spawn(async move {
            let mut leader = server.borrow_watched().current_leader;
            lead_seen.store(
                Lead::of(&server.borrow_watched()).to_u8(),
                std::sync::atomic::Ordering::Release,
            );
            let lease_end = tokio::time::sleep(if alone { Duration::ZERO } else { lease });
            tokio::pin!(lease_end);
            let mut lease_over = alone;
            loop {
                tokio::select! {
                    () = &mut lease_end, if !lease_over => {
                        lease_over = true;
                        if floor.is_some() {
                            let m = server.borrow_watched().membership_config.clone();
                            elect_raft.runtime_config().elect(past_floor(&m));
                        }
                        continue;
                    }
                    changed = server.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
                let m = server.borrow_watched().clone();
                lead_seen.store(Lead::of(&m).to_u8(), std::sync::atomic::Ordering::Release);
                if floor.is_some() && lease_over {
                    elect_raft
                        .runtime_config()
                        .elect(past_floor(&m.membership_config));
                }
                // A change of role or leader starts the wait for the group afresh: a new
                // leader has no quorum acknowledgement yet, a new follower no append.
                heard_change.now();
                if m.current_leader != leader {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    leader = m.current_leader;
                }
            }
            lead_seen.store(Lead::No.to_u8(), std::sync::atomic::Ordering::Release);
        });
        Ok(Group {
            raft,
            sm,
            leader_changes,
            lead,
            transferred_in: Arc::default(),
            lease,
            embargo_until,
            lease_reads_local: Arc::default(),
            heard,
            leader_sent: Arc::new(Heard::new()),
            leader_out_of_touch,
            votes_need_membership: Arc::default(),
            floor,
        })
    }

    /// Stands for election now (a group a split created, on the node that led its parent,
    /// so that the child has a leader without waiting for an election timeout).
    pub async fn campaign(&self) -> Result<(), GroupError> {
        self.raft
            .trigger()
            .elect(false)
            .await
            .map_err(|e| GroupError::stopped(&e))
    }

    /// How many reads [`Group::linearize`] confirmed from the metrics alone (the fast path).
    pub fn lease_reads_local(&self) -> u64 {
        self.lease_reads_local
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this replica started less than one lease ago, and so must not grant a vote
    /// (except to a leadership transfer, which the leader asked for and for which it gave up
    /// its lease): it may have acknowledged a leader just before it restarted.
    pub fn voting_embargoed(&self) -> bool {
        std::time::Instant::now() < self.embargo_until
    }

    /// Times this node saw the group's leader change since it started the group (the first
    /// election counts).
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the group has a membership (was bootstrapped or joined).
    pub async fn is_initialized(&self) -> Result<bool, GroupError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| GroupError::stopped(&e))
    }

    /// Bootstraps the group with `members` as its voters.
    pub async fn initialize(&self, members: BTreeMap<u64, NodeAddr>) -> Result<(), GroupError> {
        self.raft.initialize(members).await.map_err(|e| match e {
            openraft::errors::RaftError::Fatal(f) => GroupError::stopped(&f),
            openraft::errors::RaftError::APIError(e) => GroupError::Refused(e.to_string()),
        })
    }

    /// The group's state on this node.
    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        GroupStatus {
            node: m.id,
            role: role(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            committed: m.cluster_committed.as_ref().map(|l| l.index),
            applied: m.last_applied.as_ref().map(|l| l.index),
            snapshot: m.snapshot.as_ref().map(|l| l.index),
            purged: m.purged.as_ref().map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            nodes: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
            stopped: m.running_state.as_ref().err().map(|e| e.to_string()),
        }
    }

    /// A leader's append (entries or heartbeat) was accepted by this replica: it is in touch
    /// with its group (see [`Group::in_touch`]).
    pub fn heard_from_leader(&self) {
        self.heard.now();
    }

    /// A leader's append or snapshot, in touch or not, was taken by this replica (see
    /// [`Group::leader_sent_within`]).
    pub fn sent_by_leader(&self) {
        self.leader_sent.now();
    }

    /// Whether a leader sent this replica an append or a snapshot it took within `within`
    /// (or the replica started within it): a leader replicates only to the members of its
    /// newest membership, so one that still does counts this replica, whatever a map says.
    pub fn leader_sent_within(&self, within: Duration) -> bool {
        self.leader_sent.since() < within
    }

    /// Whether this replica has been in touch with its group within `within`: as leader, a
    /// quorum acknowledged it (always, for a sole voter); otherwise it took a leader's append.
    /// A replica out of touch applies nothing new while the rest of the group may commit, so
    /// what it tells of changes (watches, invalidations) may be silently behind. A replica
    /// counts as heard when it starts and whenever its role or leader changes, so a starting
    /// node has `within` to find its leader and a leader change alone does not count. As
    /// leader it also tells its followers, on every append from now on, whether it is in
    /// touch (so a follower cut off with a deposed leader is out of touch too, one `within`
    /// later): the node calls this every `TOUCH_CHECK_INTERVAL` for every shard.
    pub fn in_touch(&self, within: Duration) -> bool {
        use openraft::Instant as _;
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let heard = self.heard.since() < within;
        let leading = m.state == ServerState::Leader && m.current_leader == Some(m.id);
        let in_touch = if leading {
            sole_voter(&m.membership_config, m.id)
                || match m.last_quorum_acked.as_ref() {
                    Some(acked) => (**acked).elapsed() < within,
                    // Just elected: as long as a follower would wait for its first append.
                    None => heard,
                }
        } else {
            heard
        };
        self.leader_out_of_touch
            .store(leading && !in_touch, std::sync::atomic::Ordering::Relaxed);
        in_touch
    }

    /// The term this node leads, if it leads one.
    pub fn leading(&self) -> Option<LeaderTerm> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        (m.state == ServerState::Leader && m.current_leader == Some(m.id))
            .then(|| LeaderTerm(m.vote.leader_id))
    }

    /// Whether this node leads the group, and alone (the only voter: no other node can be
    /// elected, so a read of the replica needs no lease check). One atomic load: it follows
    /// the group's server metrics a moment behind, which is safe for that use: a sole voter
    /// stops being one only by a change it makes itself, and it keeps its leadership until
    /// it votes for another.
    pub fn lead(&self) -> Lead {
        Lead::from_u8(self.lead.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Resolves once this node sees the group led by another node than `leader` (or by none),
    /// or the group stops: a request forwarded to `leader` may then be stuck with it.
    pub async fn leader_moved_from(&self, leader: u64) {
        let mut server = self.raft.server_metrics();
        loop {
            if server.borrow_watched().current_leader != Some(leader) {
                return;
            }
            if server.changed().await.is_err() {
                return;
            }
        }
    }

    /// As leader of `term`, waits until every entry committed before the term is applied
    /// (one read-index round, which also confirms leadership). Returns the index of the last
    /// entry in the log, after which the next proposal lands.
    pub async fn make_ready(&self, term: &LeaderTerm) -> Result<u64, ProposeError> {
        self.raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| ProposeError::NotLeader {
                leader: e.forward_to_leader().and_then(|f| f.leader_id),
            })?;
        if self.leading().as_ref() != Some(term) {
            return Err(ProposeError::NotLeader {
                leader: self.status().leader,
            });
        }
        Ok(self
            .raft
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0))
    }

    /// Proposes `request` as leader of `term`. Returns once it is handed to the group; the
    /// returned future resolves with the log index it was applied at.
    pub async fn propose(
        &self,
        request: Request,
        term: &LeaderTerm,
    ) -> Result<impl Future<Output = Result<u64, ProposeError>> + Send + 'static, ProposeError>
    {
        let (responder, done) = ProgressResponder::complete_only();
        self.raft
            .write(request)
            .responder(responder)
            .with_leader(term.0)
            .await
            .map_err(|e| ProposeError::Stopped(e.to_string()))?;
        Ok(async move {
            match done.await {
                Ok(Ok(response)) => Ok(response.log_id.index),
                Ok(Err(ClientWriteError::ForwardToLeader(f))) => Err(ProposeError::NotLeader {
                    leader: f.leader_id,
                }),
                Ok(Err(ClientWriteError::PreconditionFailed(_))) => {
                    Err(ProposeError::NotLeader { leader: None })
                }
                Ok(Err(e)) => Err(ProposeError::Unknown(e.to_string())),
                Err(_) => Err(ProposeError::Unknown(
                    "the group stopped before the entry was known to be committed".into(),
                )),
            }
        })
    }

    /// Waits up to `timeout` until `done` holds of the group's metrics; gives up at once when
    /// the group stops.
    async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&openraft::RaftMetrics<TypeConfig>) -> bool + Send + Sync,
    ) -> Result<openraft::RaftMetrics<TypeConfig>, GroupError> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| done(m) || m.running_state.is_err(), what)
            .await
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => GroupError::Timeout {
                    what: what.to_string(),
                    timeout,
                },
                openraft::metrics::WaitError::ShuttingDown => {
                    GroupError::Stopped("shutting down".into())
                }
            })?;
        match &m.running_state {
            Err(fatal) => Err(GroupError::stopped(fatal)),
            Ok(()) => Ok(m),
        }
    }

    /// Takes a snapshot (an engine checkpoint, durable) covering at least `applied`, waiting
    /// up to `timeout`; returns its index.
    pub async fn snapshot(&self, applied: u64, timeout: Duration) -> Result<u64, GroupError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| GroupError::stopped(&e))?;
        let m = self
            .wait_until(timeout, "snapshot built", |m| {
                m.snapshot.as_ref().is_some_and(|s| s.index >= applied)
            })
            .await?;
        Ok(m.snapshot.map_or(0, |s| s.index))
    }

    /// Index of the last log entry applied to this replica, as its engine's applied marker
    /// records it (0 when none).
    pub fn applied_index(&self) -> u64 {
        self.sm
            .applied()
            .ok()
            .and_then(|(id, _)| id)
            .map_or(0, |id| id.index)
    }

    /// Asks for the log to be purged up to `upto` (included) and returns without waiting:
    /// the purge happens once replication no longer reads those entries.
    pub async fn purge_soon(&self, upto: u64) -> Result<(), GroupError> {
        self.raft
            .trigger()
            .purge_log(upto)
            .await
            .map_err(|e| GroupError::stopped(&e))
    }

    /// Purges the log up to `upto` (at most the snapshot), waiting up to `timeout` for it
    /// (replication still reading the entries holds a purge back).
    pub async fn purge(&self, upto: u64, timeout: Duration) -> Result<(), GroupError> {
        self.raft
            .trigger()
            .purge_log(upto)
            .await
            .map_err(|e| GroupError::stopped(&e))?;
        self.wait_until(timeout, "log purged", |m| {
            m.purged.as_ref().is_some_and(|p| p.index >= upto)
        })
        .await
        .map(|_| ())
    }

    /// Waits up to `timeout` until the group's membership (from its log or state machine) has
    /// been loaded; returns the status then.
    pub async fn wait_for_membership(&self, timeout: Duration) -> Result<GroupStatus, GroupError> {
        self.wait_until(timeout, "membership loaded", |m| {
            m.membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some()
        })
        .await?;
        Ok(self.status())
    }

    /// Waits up to `timeout` until `node` leads the group.
    pub async fn wait_for_leader(&self, node: u64, timeout: Duration) -> Result<(), GroupError> {
        self.wait_until(timeout, "leader elected", |m| {
            m.current_leader == Some(node)
        })
        .await
        .map(|_| ())
    }

    /// As leader, confirms that this node still leads and that everything committed before
    /// the call is applied, so a read of the replica that follows is linearizable. Uses the
    /// leader lease (no message to the followers while a quorum acknowledged the leader within
    /// the lease; followers refuse to vote while they grant it, see docs/design.md).
    pub async fn linearize(&self) -> Result<(), ProposeError> {
        let transferred = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let transferred = self
                .transferred_in
                .load(std::sync::atomic::Ordering::Acquire)
                == m.vote.leader_id.term;
            if !transferred && lease_read_ready(&m, self.lease) {
                self.lease_reads_local
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            transferred
        };
        let confirmed = if transferred {
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await
        } else {
            // The lease from the latest quorum acknowledgement; when it has run out (a
            // heartbeat round late under load), heartbeat at once and wait up to one lease for
            // a quorum to answer, instead of failing the read.
            self.raft
                .ensure_linearizable(LinearizerOption::new(None, true))
                .await
        };
        confirmed.map(|_| ()).map_err(|e| ProposeError::NotLeader {
            leader: e.forward_to_leader().and_then(|f| f.leader_id),
        })
    }

    /// As leader, starts replicating to `id` at `addr` as a learner (returns at once; a node
    /// already a member is left as it is by the caller).
    pub async fn add_learner(&self, id: u64, addr: NodeAddr) -> Result<(), GroupError> {
        self.raft
            .add_learner(id, addr, false)
            .await
            .map(|_| ())
            .map_err(GroupError::of_write)
    }

    /// As leader, makes `voters` the group's voters; voters left out stay as learners when
    /// `retain`, else leave the group. Returns once the change is committed.
    pub async fn set_voters(&self, voters: BTreeSet<u64>, retain: bool) -> Result<(), GroupError> {
        self.raft
            .change_membership(voters, retain)
            .await
            .map(|_| ())
            .map_err(GroupError::of_write)
    }

    /// As leader, removes learners `ids` from the group (they get no more of its log).
    /// Returns once the change is committed; errs for a node that is still a voter.
    pub async fn remove_learners(&self, ids: BTreeSet<u64>) -> Result<(), GroupError> {
        self.raft
            .change_membership(openraft::ChangeMembers::RemoveNodes(ids), false)
            .await
            .map(|_| ())
            .map_err(GroupError::of_write)
    }

    /// As leader, hands leadership to voter `to` once it holds this leader's whole log,
    /// waiting up to `catch_up` for that; errs (and keeps leading) when it does not, or when
    /// this node does not lead.
    ///
    /// The target is elected at once only if its log already reaches the leader's last entry
    /// when the transfer message arrives (openraft lets it wait for that no longer than the
    /// shortest election timeout). Otherwise the transfer fails, and the old leader, which
    /// refuses writes from the moment it asks and no longer heartbeats, holds the group until
    /// an ordinary election replaces it (about a lease and an election timeout). So the
    /// caller stops appending first (the shard's proposer lets its entries in flight land),
    /// and this waits for the target to acknowledge everything.
    pub async fn transfer_leader(&self, to: u64, catch_up: Duration) -> Result<(), GroupError> {
        let Some(term) = self.leading() else {
            return Err(GroupError::NotLeader {
                leader: self.status().leader,
            });
        };
        let caught_up = |m: &openraft::RaftMetrics<TypeConfig>| {
            let last = m.last_log_index.unwrap_or(0);
            m.replication
                .as_ref()
                .and_then(|r| r.get(&to).cloned())
                .flatten()
                .is_some_and(|log| log.index >= last)
        };
        let leads = |m: &openraft::RaftMetrics<TypeConfig>| {
            m.state == ServerState::Leader && m.vote.leader_id == term.0
        };
        let m = self
            .wait_until(catch_up, "the target to hold the whole log", |m| {
                !leads(m) || caught_up(m)
            })
            .await?;
        if !leads(&m) {
            return Err(GroupError::NotLeader {
                leader: m.current_leader,
            });
        }
        // The guard goes up before the transfer starts, so no read can slip in between.
        self.transferred_in
            .store(term.0.term, std::sync::atomic::Ordering::Release);
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| GroupError::stopped(&e))
    }

    /// As leader: each member's highest log index known to be replicated to it.
    pub fn replicated(&self) -> Option<BTreeMap<u64, u64>> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.replication.as_ref().map(|r| {
            r.iter()
                .map(|(id, log)| (*id, log.as_ref().map_or(0, |l| l.index)))
                .collect()
        })
    }

    /// As leader: how long ago each member last acknowledged a heartbeat or an append
    /// (`None`: never, since this node became leader).
    pub fn heard_from(&self) -> Option<BTreeMap<u64, Option<Duration>>> {
        use openraft::Instant as _;
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.heartbeat.as_ref().map(|h| {
            h.iter()
                .map(|(id, at)| (*id, at.as_ref().map(|at| (**at).elapsed())))
                .collect()
        })
    }

    /// Whether the group's latest membership is committed (no change under way).
    pub fn membership_settled(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.log_id() == m.committed_membership_config.log_id()
    }

    /// The group's committed membership when it is settled and not joint: the log index of
    /// the entry that set it, its voters and its learners (`None` while a change is under
    /// way). What a leader reports of its group to the cluster map: never a membership that
    /// could still be undone.
    pub fn committed_membership(&self) -> Option<(u64, BTreeSet<u64>, BTreeSet<u64>)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let committed = &m.committed_membership_config;
        if m.membership_config.log_id() != committed.log_id() {
            return None;
        }
        let membership = committed.membership();
        if membership.get_joint_config().len() > 1 {
            return None;
        }
        Some((
            committed.log_id().as_ref().map_or(0, |l| l.index),
            membership.voter_ids().collect(),
            membership.learner_ids().collect(),
        ))
    }

    /// From now on this replica votes only while the newest membership its log knows of
    /// names it. For a node whose groups never bootstrap with several members at once (a
    /// group starts with its first node alone and adds the others): a replica created
    /// empty for a leader that added it must not vote before its log catches up, since a
    /// candidate of an outdated membership that still counts this node could otherwise win
    /// with its vote.
    pub fn vote_only_as_member(&self) {
        self.votes_need_membership
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether this replica may answer a vote request (see [`Group::vote_only_as_member`]).
    pub fn may_vote(&self) -> bool {
        !self
            .votes_need_membership
            .load(std::sync::atomic::Ordering::Acquire)
            || self.is_in_own_membership()
    }

    /// Whether the newest membership this replica knows of names it (as a voter or a
    /// learner), and is past its floor if it has one ([`MembershipFloor`]).
    pub fn is_in_own_membership(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let me = m.id;
        if self
            .floor
            .is_some_and(|f| !f.passed_by(&m.membership_config))
        {
            return false;
        }
        let membership = m.membership_config.membership();
        membership.voter_ids().any(|v| v == me) || membership.learner_ids().any(|l| l == me)
    }

    /// Log index of the newest membership this replica knows of (0: none, the replica
    /// never heard from its group).
    pub fn membership_index(&self) -> u64 {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.log_id().as_ref().map_or(0, |l| l.index)
    }

    /// Log id, as (term, index), of the newest membership this replica knows of (`None`:
    /// the replica never heard from its group).
    pub fn membership_log_id(&self) -> Option<(u64, u64)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config
            .log_id()
            .as_ref()
            .map(|l| (l.leader_id.term, l.index))
    }

    /// The voters a change of the group's voters left half made is heading to: `Some` when
    /// the group's committed membership, with no newer one pending, is joint. openraft makes
    /// a change in two entries (the joint configuration, then the new one alone), and the
    /// second is proposed by the call that asked for the change: a leader that lost its
    /// term in between, or a caller that stopped waiting, leaves the group joint for good.
    /// Its voters then count for both configurations, its leader reports no placement
    /// ([`Group::committed_membership`]) and no split is taken, until a leader finishes the
    /// change ([`Group::set_voters`] with these voters).
    pub fn unfinished_change(&self) -> Option<BTreeSet<u64>> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let committed = &m.committed_membership_config;
        if m.membership_config.log_id() != committed.log_id() {
            return None;
        }
        let configs = committed.membership().get_joint_config();
        if configs.len() < 2 {
            return None;
        }
        configs.last().cloned()
    }

    /// Whether the group's membership is a joint one (a change of its voters half made).
    pub fn membership_joint(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().get_joint_config().len() > 1
    }

    /// Stops the group's Raft on this node.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// What creates a group's replica on this node when a leader first contacts it (the node
/// holds no replica of the group yet: it was just added to it).
pub trait GroupHost: Send + Sync + std::fmt::Debug + 'static {
    /// Opens a replica of `group` for a message from a leader of term `term`; `None` when the
    /// node is not to hold one (no such group, or this node's replica of it was removed in
    /// a later term: the message is a deposed leader's).
    fn open_on_contact(
        &self,
        group: u64,
        term: u64,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<Group>> + Send + '_>>;
}

/// The groups this node hosts, by group id.
#[derive(Debug)]
pub struct Groups {
    /// Raft id of the node hosting these groups: peer messages addressed to another id are
    /// refused.
    node: u64,
    map: RwLock<HashMap<u64, Group>>,
    host: std::sync::OnceLock<Arc<dyn GroupHost>>,
}

impl Groups {
    pub fn new(node: u64) -> Groups {
        Groups {
            node,
            map: RwLock::default(),
            host: std::sync::OnceLock::new(),
        }
    }

    /// Sets what opens replicas on contact (once; later calls are ignored).
    pub fn set_host(&self, host: Arc<dyn GroupHost>) {
        let _ = self.host.set(host);
    }

    /// Whether something opens replicas on contact here.
    pub fn has_host(&self) -> bool {
        self.host.get().is_some()
    }

    /// Group `id`, or a replica of it opened for a leader's message of term `term` (see
    /// [`GroupHost`]).
    pub async fn get_or_open(&self, id: u64, term: u64) -> Option<Group> {
        if let Some(group) = self.get(id) {
            return Some(group);
        }
        self.host.get()?.open_on_contact(id, term).await
    }

    /// Raft id of the node hosting these groups.
    pub fn node(&self) -> u64 {
        self.node
    }

    pub fn insert(&self, id: u64, group: Group) {
        self.map.write().insert(id, group);
    }

    pub fn remove(&self, id: u64) -> Option<Group> {
        self.map.write().remove(&id)
    }

    pub fn get(&self, id: u64) -> Option<Group> {
        self.map.read().get(&id).cloned()
    }

    /// Ids of the groups hosted, in no particular order.
    pub fn ids(&self) -> Vec<u64> {
        self.map.read().keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{LogId, Membership, RaftMetrics, StoredMembership, Vote};

    const LEASE: Duration = Duration::from_millis(400);

    fn log_id(term: u64, node: u64, index: u64) -> LogId<LeaderId<u64, u64>> {
        LogId::new(
            LeaderId {
                term,
                node_id: node,
            },
            index,
        )
    }

    fn membership(
        voters: &[u64],
        at: u64,
    ) -> Arc<StoredMembership<LeaderId<u64, u64>, u64, NodeAddr>> {
        let nodes: BTreeMap<u64, NodeAddr> = [1, 2, 3]
            .into_iter()
            .map(|id| {
                (
                    id,
                    NodeAddr {
                        grpc: format!("n{id}"),
                    },
                )
            })
            .collect();
        let m = Membership::new(vec![voters.iter().copied().collect()], nodes).unwrap();
        Arc::new(StoredMembership::new(Some(log_id(1, 1, at)), m))
    }

    /// A quorum acknowledgement `ago` before now, on openraft's clock.
    fn acked_ago(
        ago: Duration,
    ) -> openraft::metrics::SerdeInstant<openraft::type_config::alias::InstantOf<TypeConfig>> {
        use openraft::Instant as _;
        let now = openraft::type_config::alias::InstantOf::<TypeConfig>::now();
        openraft::metrics::SerdeInstant::new(now - ago)
    }

    /// Node 1 leads term 2, has applied an entry of it, is a voter of a settled membership,
    /// and a quorum acknowledged it 100 ms ago: every condition of the fast path holds.
    fn ready() -> RaftMetrics<TypeConfig> {
        let mut m = RaftMetrics::<TypeConfig>::new_initial(1);
        m.state = ServerState::Leader;
        m.current_leader = Some(1);
        m.current_term = 2;
        m.vote = Vote::new_committed(2, 1);
        m.last_applied = Some(log_id(2, 1, 7));
        m.membership_config = membership(&[1, 2, 3], 1);
        m.committed_membership_config = membership(&[1, 2, 3], 1);
        m.last_quorum_acked = Some(acked_ago(Duration::from_millis(100)));
        m
    }

    #[tokio::test]
    async fn the_lease_fast_path_needs_every_condition() {
        assert!(lease_read_ready(&ready(), LEASE), "all conditions hold");
        type Break = fn(&mut RaftMetrics<TypeConfig>);
        let broken: [(&str, Break); 9] = [
            ("a follower", |m| m.state = ServerState::Follower),
            ("another node leads", |m| m.current_leader = Some(2)),
            ("the vote is not granted yet", |m| m.vote = Vote::new(2, 1)),
            ("only entries of an earlier term applied", |m| {
                m.last_applied = Some(log_id(1, 1, 6))
            }),
            ("nothing applied", |m| m.last_applied = None),
            ("a membership change under way", |m| {
                m.membership_config = membership(&[1, 2, 3], 8)
            }),
            ("not a voter any more", |m| {
                m.membership_config = membership(&[2, 3], 1);
                m.committed_membership_config = membership(&[2, 3], 1);
            }),
            ("no quorum acknowledgement", |m| m.last_quorum_acked = None),
            ("the lease ran out", |m| {
                m.last_quorum_acked = Some(acked_ago(LEASE + Duration::from_millis(1)));
            }),
        ];
        for (why, break_it) in broken {
            let mut m = ready();
            break_it(&mut m);
            assert!(!lease_read_ready(&m, LEASE), "served a read with {why}");
        }
    }
}
