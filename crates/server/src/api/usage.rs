//! The datastore's size over time: the server counts its chunk store at
//! start, every hour and after every GC it runs, keeps the newest count
//! for `/status` and `/metrics`, and appends it to the history in
//! `.reports/usage.json` for the page's chart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hoard_datastore::reports::UsageSample;
use tokio::sync::watch;
use tracing::warn;

use crate::Shared;

/// Between two counts when nothing else asks for one.
const INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub(crate) struct UsageCache {
    latest: Mutex<Option<UsageSample>>,
    /// One count at a time.
    counting: tokio::sync::Mutex<()>,
}

impl UsageCache {
    pub fn latest(&self) -> Option<UsageSample> {
        *self.latest.lock().expect("usage lock")
    }
}

/// Counts now, keeps the count and records it in the history.
pub(crate) async fn sample(shared: &Arc<Shared>) {
    let _one = shared.web.usage.counting.lock().await;
    let s = shared.clone();
    let measured = tokio::task::spawn_blocking(move || {
        let sample = s.ds.measure_usage()?;
        s.ds.record_usage(sample)?;
        Ok::<_, hoard_datastore::Error>(sample)
    })
    .await;
    match measured {
        Ok(Ok(sample)) => *shared.web.usage.latest.lock().expect("usage lock") = Some(sample),
        Ok(Err(e)) => warn!("counting the datastore's usage: {e}"),
        Err(e) => warn!("counting the datastore's usage: {e}"),
    }
}

/// Samples at start and then every [`INTERVAL`] until the server stops.
pub(crate) async fn sampler(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        sample(&shared).await;
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
