//! Read-your-writes for API callers: how far the projector got in each partition, and
//! waiting until a write is readable.

use std::sync::Arc;
use std::time::Duration;

use fleetcmd_contracts::codec;
use fleetcmd_domain::ports::{Bus, PortError, ReadModel};
use fleetcmd_domain::protocol::{LogPosition, PROJECTED_SUBJECT};
use futures::StreamExt;
use tokio::sync::watch;

/// How long an API call waits for its write to become readable before answering anyway.
pub const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// Tracks how far the projector got in each partition, so API calls can return only once
/// their writes are readable (read-your-writes).
pub struct ProjectionWatch {
    positions: Vec<watch::Sender<u64>>,
}

impl ProjectionWatch {
    /// Subscribes to projector progress first, then seeds positions from the read model, so
    /// no progress message is missed.
    pub async fn start(
        bus: Arc<dyn Bus>,
        read_model: Arc<dyn ReadModel>,
        partitions: u32,
    ) -> Result<Arc<Self>, PortError> {
        let sub = bus.subscribe(PROJECTED_SUBJECT, None).await?;
        let mut positions = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            positions.push(watch::Sender::new(read_model.position(p).await?));
        }
        Ok(Self::following(sub, positions))
    }

    /// Like [`ProjectionWatch::start`], for a process without a read model (the edge): every
    /// position starts at 0 and follows the projector's progress messages, which is enough
    /// to wait for new writes: the commit that projects one announces it.
    pub async fn follow(bus: Arc<dyn Bus>, partitions: u32) -> Result<Arc<Self>, PortError> {
        let sub = bus.subscribe(PROJECTED_SUBJECT, None).await?;
        let positions = (0..partitions).map(|_| watch::Sender::new(0)).collect();
        Ok(Self::following(sub, positions))
    }

    fn following(
        mut sub: fleetcmd_domain::ports::BoxStream<fleetcmd_domain::ports::BusMessage>,
        positions: Vec<watch::Sender<u64>>,
    ) -> Arc<Self> {
        let this = Arc::new(Self { positions });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(this) = weak.upgrade() else { break };
                match codec::decode_projected(&msg.payload) {
                    Ok(p) => this.advance(p.partition, p.next_offset),
                    Err(e) => tracing::warn!(error = %e, "malformed projection progress message"),
                }
            }
        });
        this
    }

    /// Records that `partition` is projected up to `next_offset`.
    pub fn advance(&self, partition: u32, next_offset: u64) {
        if let Some(tx) = self.positions.get(partition as usize) {
            tx.send_if_modified(|cur| {
                let moved = next_offset > *cur;
                if moved {
                    *cur = next_offset;
                }
                moved
            });
        }
    }

    /// The projected position of a partition.
    pub fn position(&self, partition: u32) -> u64 {
        self.positions
            .get(partition as usize)
            .map_or(0, |tx| *tx.borrow())
    }

    /// Waits until `position` is projected; false if `timeout` passed first.
    pub async fn wait(&self, position: LogPosition, timeout: Duration) -> bool {
        let Some(tx) = self.positions.get(position.partition as usize) else {
            return false;
        };
        let mut rx = tx.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position.next_offset))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Waits until the write at `position` is readable (read-your-writes for API callers).
pub async fn await_projection(projection: &ProjectionWatch, position: Option<LogPosition>) {
    if let Some(p) = position
        && !projection.wait(p, READ_YOUR_WRITES_TIMEOUT).await
    {
        tracing::warn!(
            partition = p.partition,
            offset = p.next_offset,
            "projection lags; answering before the write is readable"
        );
    }
}
