//! The shell's part of authentication (PROTOCOL §8): the token at the
//! upgrade (401, 429), requests handed to the core with the per-user
//! admission, the auth deadlines in the timing wheel (4004, 4005), and the
//! user's release when its connection closes.
//!
//! The decisions are the sans-IO modules' (`auth::upgrade_token`,
//! `Verifier::verify`, `UserTable`, the core's tiers); this only reads the
//! clock, takes the shared table's lock (on connect, auth and close only)
//! and picks up a reloaded key set.

use std::sync::Arc;
use std::time::Instant;

use super::timers::TimerKind;
use super::{Client, TimerKey, Worker, realtime_ns};
use crate::auth::{self, AuthMode, AuthResult, Claims};
use crate::fanout::worker::{ConnId, UpgradeRefusal};
use crate::ws;

/// `Retry-After` of a 429 for a user's `max_connections`.
const USER_RETRY_AFTER_SECS: u32 = 1;

impl Worker {
    /// Whether clients authenticate at all.
    pub(super) fn auth_on(&self) -> bool {
        self.shared.auth.is_some() && self.core.auth_mode() != AuthMode::Off
    }

    /// Before a verification: the Unix clock for the core (tokens speak
    /// Unix seconds) and a reloaded key set, if any (one atomic load).
    pub(super) fn prepare_auth(&mut self, now_ns: u64) {
        let Some(a) = &self.shared.auth else {
            return;
        };
        self.core.set_unix_offset_ns(realtime_ns(), now_ns);
        if a.generation() != self.verifier_gen {
            let (v, generation) = a.verifier();
            self.verifier_gen = generation;
            self.core.set_verifier(v);
        }
    }

    /// The token of an upgrade to `/ws`, if it presented one (PROTOCOL §8:
    /// `Authorization: Bearer`, then `?token=`): `Ok(claims)` with the user
    /// admitted in the shared table, or the 401/429 to answer.
    pub(super) fn upgrade_auth(
        &mut self,
        req: &ws::Request,
        now_ns: u64,
    ) -> Result<Option<Claims>, ws::Response> {
        let token = match auth::upgrade_token(req.header("Authorization"), req.query_param("token"))
        {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.core
                    .note_upgrade_auth(AuthResult::from(&e), Some(UpgradeRefusal::Unauthorized));
                return Err(ws::Response::invalid_token());
            }
        };
        self.prepare_auth(now_ns);
        let (Some(a), Some(verifier)) = (&self.shared.auth, self.core.verifier().cloned()) else {
            return Ok(None);
        };
        let unix_s = realtime_ns() / 1_000_000_000;
        let claims = match verifier.verify(token, unix_s) {
            Ok(c) => c,
            Err(e) => {
                self.core
                    .note_upgrade_auth(AuthResult::from(&e), Some(UpgradeRefusal::Unauthorized));
                return Err(ws::Response::invalid_token());
            }
        };
        let admitted = a
            .users()
            .connect(&claims.sub, claims.entitlements.max_connections);
        if admitted.is_err() {
            self.core
                .note_upgrade_auth(AuthResult::Ok, Some(UpgradeRefusal::UserConnections));
            return Err(ws::Response::too_many_requests(USER_RETRY_AFTER_SECS));
        }
        self.core.note_upgrade_auth(AuthResult::Ok, None);
        Ok(Some(claims))
    }

    /// A client text message for the core, with the per-user admission of
    /// a late `auth` (PROTOCOL §8: exact per process through the shared table).
    pub(super) fn client_text(&mut self, slot: usize, id: ConnId, text: &str, now_ns: u64) {
        if !self.auth_on() {
            self.core.handle_text(id, text, now_ns);
            return;
        }
        self.prepare_auth(now_ns);
        let mut admitted: Option<Arc<str>> = None;
        let shared = &self.shared;
        self.core
            .handle_text_admit(id, text, now_ns, &mut |sub, max| match &shared.auth {
                Some(a) if a.users().connect(sub, max).is_ok() => {
                    admitted = Some(sub.clone());
                    true
                }
                _ => false,
            });
        if let Some(user) = admitted
            && let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut)
        {
            c.auth.get_or_insert_default().user = Some(user);
        }
        self.sync_auth_deadlines();
    }

    /// Moves the core's auth deadlines into the wheel, one entry per
    /// connection (a later deadline replaces the earlier).
    pub(super) fn sync_auth_deadlines(&mut self) {
        while let Some((id, at_ns)) = self.core.poll_auth_deadline() {
            let Some(&slot) = self.by_core.get(id.0 as usize) else {
                continue;
            };
            let Some(c) = self.clients.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            let auth = c.auth.get_or_insert_default();
            if let Some(h) = auth.timer.take() {
                self.timers.cancel(h);
            }
            let key = TimerKey {
                slot,
                generation: self.generations[slot as usize],
                kind: TimerKind::Auth,
            };
            auth.timer = Some(self.timers.insert(at_ns, key));
        }
    }

    /// A connection's auth deadline fired: the core decides (4004, 4005, or
    /// a later deadline after a refresh); a close goes out this turn.
    pub(super) fn auth_deadline(&mut self, slot: usize, now: Instant, now_ns: u64) {
        let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Some(auth) = c.auth.as_mut() {
            auth.timer = None;
        }
        let Some(id) = c.core else {
            return;
        };
        self.core.handle_auth_timer(id, now_ns);
        self.sync_auth_deadlines();
        self.serve_closes(now, now_ns);
    }

    /// A closing client's user gives its connection back to the table.
    pub(super) fn release_user(&mut self, c: &mut Client) {
        let Some(mut auth) = c.auth.take() else {
            return;
        };
        if let (Some(user), Some(a)) = (auth.user.take(), &self.shared.auth) {
            a.users().disconnect(&user);
        }
        if let Some(h) = auth.timer.take() {
            self.timers.cancel(h);
        }
    }
}
