//! CreateBackup, BackupDataFixed, BackupDataDynamic, BackupFinished: one
//! file of a snapshot, written on its own stream.

use hoard_datastore::{ChunkStore, FileKind, FileWriter, FsTime, SnapshotState};
use hoard_protocol::{CreateBackup, DynamicEntryList, ErrorId, FixedEntryList, Message};
use hoard_types::{BackupGroup, Digest, SnapshotPath, SourceAttributes};
use tokio::task::block_in_place;
use tracing::info;

use crate::connection::{BackupStream, Connection, Flow, OpenSnapshot, Stream};

impl Connection {
    pub(crate) async fn create_backup(&mut self, stream: u8, req: CreateBackup) -> Flow {
        let snapshot = SnapshotPath {
            group: BackupGroup {
                ty: req.backup_type,
                id: req.id.clone(),
            },
            time: req.time,
        };
        let kind = if req.flags.dynamic() {
            FileKind::Dynamic
        } else {
            FileKind::Fixed
        };
        if let Err(e) = self.writer_start() {
            return self.fail_ds(stream, e).await;
        }
        let limits = &self.shared.config.limits;
        let open_here = self
            .streams
            .values()
            .filter(|s| matches!(s, Stream::Backup(_)))
            .count();
        if open_here >= limits.max_open_files_per_connection {
            let msg = format!(
                "this connection has {open_here} files open, the most it may; finish some first"
            );
            return self.fail(stream, msg).await;
        }
        // A new snapshot holds a file (its lock) too.
        let new_snapshot = !self.snapshots.contains_key(&snapshot);
        let wanted = if new_snapshot { 2 } else { 1 };
        let Ok(mut permits) = self
            .shared
            .open_files
            .clone()
            .try_acquire_many_owned(wanted)
        else {
            let msg = "the server has as many files open as it may; try again later".to_string();
            return self.fail_with(stream, ErrorId::Busy, msg).await;
        };
        let result = block_in_place(|| -> hoard_datastore::Result<FileWriter> {
            hoard_datastore::check_new_file(kind, req.file_size, req.chunk_size)?;
            if new_snapshot {
                if let Some(group) = self.claim.take() {
                    self.ds.claim_group(&group, &self.principal.name)?;
                }
                // A snapshot is created by one connection and immutable
                // after: EXCL holds for every CreateBackup.
                let mut writer = self.ds.begin_snapshot(&snapshot)?;
                if self.features.contains(hoard_protocol::Features::ENCRYPTION) {
                    writer.set_encrypted();
                }
                self.shared.web.metrics.backups_started.inc();
                self.shared
                    .web
                    .live
                    .backup_opened(self.live_id, snapshot.to_string());
                let open = permits.split(1).expect("two permits taken");
                self.snapshots.insert(
                    snapshot.clone(),
                    OpenSnapshot {
                        writer,
                        _open: open,
                    },
                );
            }
            let open = self.snapshots.get_mut(&snapshot).expect("inserted above");
            open.writer.start_file(
                &req.name,
                kind,
                req.flags.raw(),
                req.file_size,
                req.chunk_size,
            )
        });
        match result {
            Ok(file) => {
                let path = file.rel_path().to_string();
                self.streams.insert(
                    stream,
                    Stream::Backup(Box::new(BackupStream {
                        snapshot,
                        file,
                        _open: permits,
                    })),
                );
                self.send(stream, Message::BackupCreated { path }).await
            }
            Err(e) => self.fail_ds(stream, e).await,
        }
    }

    /// SealSnapshot: stores the client's seal in the manifest of a
    /// snapshot this connection writes. The server cannot check the MAC
    /// (the key is the client's); it checks only that the body is text.
    pub(crate) async fn seal_snapshot(
        &mut self,
        stream: u8,
        snapshot: String,
        mac: [u8; 32],
        body: bytes::Bytes,
    ) -> Flow {
        let Some(path) = self.own_snapshot(stream, "SealSnapshot", &snapshot).await? else {
            return Ok(());
        };
        let Ok(body) = String::from_utf8(body.to_vec()) else {
            return self
                .fail(stream, "SealSnapshot's body is not UTF-8".into())
                .await;
        };
        let open = self
            .snapshots
            .get_mut(&path)
            .expect("own_snapshot checked it");
        let seal = hoard_datastore::Seal {
            mac: hex::encode(mac),
            body,
        };
        match block_in_place(|| open.writer.seal(seal)) {
            Ok(()) => self.send(stream, Message::Ok).await,
            Err(e) => self.fail_ds(stream, e).await,
        }
    }

    /// CloseSnapshot: closes a snapshot this connection writes, once none
    /// of its files is open on a stream, and answers Ok only once it is
    /// stored complete. A client that heard that Ok may report the backup
    /// done: no crash can make the snapshot incomplete any more.
    pub(crate) async fn close_snapshot(&mut self, stream: u8, snapshot: String) -> Flow {
        let Some(path) = self
            .own_snapshot(stream, "CloseSnapshot", &snapshot)
            .await?
        else {
            return Ok(());
        };
        let busy = self.streams.iter().find_map(|(s, st)| match st {
            Stream::Backup(b) if b.snapshot == path => Some(*s),
            _ => None,
        });
        if let Some(s) = busy {
            return self
                .fail(
                    stream,
                    format!("{path} has a file open on stream {s}: finish it first"),
                )
                .await;
        }
        let open = self
            .snapshots
            .remove(&path)
            .expect("own_snapshot checked it");
        let closed = block_in_place(|| open.writer.close());
        crate::api::snapshot_closed(&self.shared, self.live_id, &path, &closed);
        match closed {
            Ok(SnapshotState::Complete) => self.send(stream, Message::Ok).await,
            Ok(_) => {
                let why = "it has no file, a file of it was started and not finished, or it is encrypted and not sealed";
                self.fail(stream, format!("{path} is not complete: {why}"))
                    .await
            }
            Err(e) => self.fail_ds(stream, e).await,
        }
    }

    /// The snapshot a `what` packet names, if this connection writes it;
    /// answers Error and gives `None` if it names none, or another.
    async fn own_snapshot(
        &mut self,
        stream: u8,
        what: &str,
        snapshot: &str,
    ) -> Result<Option<SnapshotPath>, crate::connection::Closed> {
        let problem = match snapshot.parse::<SnapshotPath>() {
            Ok(path) if self.snapshots.contains_key(&path) => return Ok(Some(path)),
            Ok(path) => format!("{what} for {path}, which this connection does not write"),
            Err(_) => format!("{what} names {snapshot:?}, not a snapshot"),
        };
        self.fail(stream, problem).await?;
        Ok(None)
    }

    /// Checks `stream` has a backup of `kind` open; answers Error if not.
    async fn expect_backup(
        &mut self,
        stream: u8,
        kind: FileKind,
        what: &str,
    ) -> Result<bool, crate::connection::Closed> {
        let problem = match self.streams.get(&stream) {
            Some(Stream::Backup(b)) if b.file.kind() == kind => return Ok(true),
            Some(Stream::Backup(_)) => {
                format!("{what} does not match the kind of file open on stream {stream}")
            }
            _ => format!("{what} on stream {stream}, which has no backup open"),
        };
        self.fail(stream, problem).await?;
        Ok(false)
    }

    pub(crate) async fn backup_data_fixed(&mut self, stream: u8, list: FixedEntryList) -> Flow {
        let digests = list.iter().map(|e| e.digest);
        self.backup_data(
            stream,
            FileKind::Fixed,
            "BackupDataFixed",
            digests,
            |file, store, since| {
                list.iter()
                    .try_for_each(|e| file.add_fixed(store, e.index, &e.digest, since))
            },
        )
        .await
    }

    pub(crate) async fn backup_data_dynamic(&mut self, stream: u8, list: DynamicEntryList) -> Flow {
        let digests = list.iter().map(|e| e.digest);
        self.backup_data(
            stream,
            FileKind::Dynamic,
            "BackupDataDynamic",
            digests,
            |file, store, since| {
                list.iter()
                    .try_for_each(|e| file.add_dynamic(store, e.offset, &e.digest, since))
            },
        )
        .await
    }

    /// Adds entries to the file open on `stream` once every upload they
    /// reference has landed.
    async fn backup_data(
        &mut self,
        stream: u8,
        kind: FileKind,
        what: &str,
        digests: impl Iterator<Item = Digest>,
        apply: impl FnOnce(&mut FileWriter, &ChunkStore, FsTime) -> hoard_datastore::Result<()>,
    ) -> Flow {
        if !self.expect_backup(stream, kind, what).await? {
            return Ok(());
        }
        let digests: Vec<Digest> = digests.collect();
        self.settle_uploads(digests.iter().copied()).await?;
        // The known-chunks rule (crate::authorize), checked once the
        // uploads in flight have landed: only a verified, stored upload
        // makes its digest usable.
        if let Some(d) = self.unknown_reference(&digests) {
            let msg = format!(
                "permission denied: chunk {d} was neither uploaded on this connection nor listed by an index of the group that this connection read"
            );
            return self.fail_with(stream, ErrorId::Denied, msg).await;
        }
        let since = match self.writer_start() {
            Ok(t) => t,
            Err(e) => return self.fail_ds(stream, e).await,
        };
        // A failed upload on this stream may have cancelled it meanwhile;
        // the client has its Error already.
        let Some(Stream::Backup(b)) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        let store = self.ds.chunks();
        match block_in_place(|| apply(&mut b.file, store, since)) {
            Ok(()) => Ok(()),
            Err(e) => self.fail_ds(stream, e).await,
        }
    }

    /// Extension FileAttributes: remembered for the file's manifest entry.
    pub(crate) async fn file_attributes(&mut self, stream: u8, attrs: SourceAttributes) -> Flow {
        match self.streams.get_mut(&stream) {
            Some(Stream::Backup(b)) => {
                b.file.set_source(attrs);
                Ok(())
            }
            _ => {
                self.fail(
                    stream,
                    format!("FileAttributes on stream {stream}, which has no backup open"),
                )
                .await
            }
        }
    }

    pub(crate) async fn backup_finished(&mut self, stream: u8) -> Flow {
        let problem = match self.streams.get(&stream) {
            Some(Stream::Backup(_)) => None,
            Some(_) => Some(format!(
                "BackupFinished on stream {stream}, which is not a backup"
            )),
            None => Some(format!(
                "BackupFinished on stream {stream}, which has no backup open"
            )),
        };
        if let Some(problem) = problem {
            return self.fail(stream, problem).await;
        }
        let Some(Stream::Backup(b)) = self.streams.remove(&stream) else {
            unreachable!("checked above")
        };
        let name = b.file.stored_name().to_string();
        let writer = &mut self
            .snapshots
            .get_mut(&b.snapshot)
            .expect("a backup stream's snapshot stays open with the connection")
            .writer;
        let store = self.ds.chunks();
        let stored_new = &self.stored_new;
        let peer = self.peer;
        let result = block_in_place(|| {
            let started = std::time::Instant::now();
            let (entry, deltas) = b
                .file
                .finish_with_deltas(store, &|d| stored_new.contains(d))?;
            if let Some(c) = deltas {
                info!(
                    %peer,
                    "{}/{name}: {} of {} changed chunks kept as deltas ({} bytes instead of {}) in {:.2} s",
                    b.snapshot,
                    c.stored,
                    c.tried,
                    c.delta_bytes,
                    c.whole_bytes,
                    started.elapsed().as_secs_f64()
                );
            }
            writer.record(entry)
        });
        // The pass is the server's work, not the peer's silence: the idle
        // timeout counts from its end.
        self.last_packet = tokio::time::Instant::now();
        match result {
            Ok(()) => self.send(stream, Message::Ok).await,
            Err(e) => {
                writer.abandon(&name);
                self.fail_ds(stream, e).await
            }
        }
    }
}
