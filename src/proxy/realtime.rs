//! # Realtime capture: the text messages of an OpenAI Realtime session, off the relay.
//!
//! On a WebSocket session whose path ends in `/realtime`, each direction's frame reader
//! ([`websocket`](super::websocket)) also reassembles text messages (RFC 6455 §5.4
//! fragments, §5.3 unmasking) and hands each complete one to a bounded channel with
//! `try_send`: the relay never waits for recording. Audio events (`input_audio_buffer.append`,
//! `*audio.delta`, recognized in a message's first bytes) are not copied, only their size
//! passed on; a message larger than [`MAX_MESSAGE`], a compressed one (`permessage-deflate`),
//! or one that finds the channel full is counted as lost. A task per session
//! ([`track`]) feeds the messages to [`RealtimeSession`] and, at each `response.done`,
//! emits one exchange with the response's bodies through the recording queue (under
//! `audit = "required"` it reserves room then, and a refusal is counted by the queue, since
//! a session already under way cannot be refused).

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::config::Audit;
use crate::exchange::realtime::{Direction, RealtimeSession, RealtimeTotals, Step};
use crate::exchange::{ExchangeId, queue::ExchangeSender};

use super::tee::{Recording, RequestMeta, Sink};

/// Largest text message captured, bytes; a `response.done` with long transcripts fits.
pub(super) const MAX_MESSAGE: usize = 4 << 20;

/// Messages waiting for the session's task; past it they are counted as lost.
pub(super) const CHANNEL: usize = 512;

/// How many leading bytes of a message decide whether it is an audio event.
const PEEK: usize = 160;

/// What a frame reader hands to the session's task.
#[derive(Debug)]
pub(super) enum Captured {
    /// A complete text message.
    Text(Direction, Bytes),
    /// An audio event, not copied: its size in bytes.
    Audio(Direction, u64),
    /// A message that could not be captured.
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Copying the message.
    Keep,
    /// An audio event: counting its length only.
    Audio,
    /// Not captured (binary, compressed, too large): nothing kept.
    Skip { lost: bool },
}

/// One direction's message reassembly; lives in its frame reader.
#[derive(Debug)]
pub(super) struct Capture {
    dir: Direction,
    tx: mpsc::Sender<Captured>,
    /// The message being read, if any: its mode, bytes so far (when kept) and length.
    msg: Option<(Mode, u64)>,
    buf: Vec<u8>,
    /// The current frame belongs to the message, with its mask and payload offset.
    frame: Option<(Option<[u8; 4]>, u64, bool)>,
    /// Messages the channel had no room for.
    pub(super) dropped: u64,
}

impl Capture {
    pub(super) fn new(dir: Direction, tx: mpsc::Sender<Captured>) -> Self {
        Capture {
            dir,
            tx,
            msg: None,
            buf: Vec::new(),
            frame: None,
            dropped: 0,
        }
    }

    /// A frame header (data or control) was read.
    pub(super) fn header(&mut self, header: &FrameHeader) {
        self.frame = None;
        let start = match header.opcode {
            OpCode::Data(Data::Text) => Some(if header.rsv1 {
                Mode::Skip { lost: true }
            } else {
                Mode::Keep
            }),
            OpCode::Data(Data::Binary) => Some(Mode::Skip { lost: false }),
            OpCode::Data(Data::Continue) => None,
            _ => return, // control frames interleave; they are not part of a message
        };
        if let Some(mode) = start {
            if self.msg.is_some() {
                // A new message before the last one ended: that one is lost.
                self.send(Captured::Lost);
            }
            self.buf.clear();
            self.msg = Some((mode, 0));
        } else if self.msg.is_none() {
            return; // a continuation of nothing
        }
        self.frame = Some((header.mask, 0, header.is_final));
    }

    /// Payload bytes of the current frame.
    pub(super) fn payload(&mut self, data: &[u8]) {
        let (Some((mask, at, _)), Some((mode, len))) = (&mut self.frame, &mut self.msg) else {
            return;
        };
        *len += data.len() as u64;
        if *mode == Mode::Keep {
            let from = self.buf.len();
            self.buf.extend_from_slice(data);
            if let Some(k) = mask {
                for (i, b) in self.buf[from..].iter_mut().enumerate() {
                    *b ^= k[((*at as usize) + i) % 4];
                }
            }
            if from < PEEK && self.buf.len() >= PEEK && is_audio(&self.buf[..PEEK]) {
                *mode = Mode::Audio;
                self.buf = Vec::new();
            } else if self.buf.len() > MAX_MESSAGE {
                *mode = Mode::Skip { lost: true };
                self.buf = Vec::new();
            }
        }
        *at += data.len() as u64;
    }

    /// The current frame ended.
    pub(super) fn frame_end(&mut self) {
        let Some((_, _, fin)) = self.frame.take() else {
            return;
        };
        if !fin {
            return;
        }
        let Some((mode, len)) = self.msg.take() else {
            return;
        };
        let buf = std::mem::take(&mut self.buf);
        match mode {
            Mode::Keep if is_audio(&buf[..buf.len().min(PEEK)]) => {
                self.send(Captured::Audio(self.dir, len));
            }
            Mode::Keep => self.send(Captured::Text(self.dir, Bytes::from(buf))),
            Mode::Audio => self.send(Captured::Audio(self.dir, len)),
            Mode::Skip { lost: true } => self.send(Captured::Lost),
            Mode::Skip { lost: false } => {}
        }
    }

    fn send(&mut self, c: Captured) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(c) {
            // The task is behind: this event is lost, counted here (the channel is full).
            self.dropped += 1;
        }
    }
}

/// True for the audio events that carry base64 audio (by their type's name in the first
/// bytes of the message: `"type"` comes first in what the SDKs and the API send; an event
/// ordered otherwise is captured and parsed like any other).
fn is_audio(head: &[u8]) -> bool {
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    has(b"input_audio_buffer.append") || has(b"audio.delta\"")
}

/// What the session's task needs to emit each response's exchange.
pub(super) struct Emitter {
    /// The session's request facts (its id becomes each response's `session`).
    pub(super) meta: RequestMeta,
    pub(super) queue: ExchangeSender,
    pub(super) audit: Audit,
}

/// Follows one session until both frame readers have dropped their senders; returns its
/// totals for the session's own record.
pub(super) async fn track(
    mut rx: mpsc::Receiver<Captured>,
    mut session: RealtimeSession,
    emit: Emitter,
) -> RealtimeTotals {
    let mut started: Option<(Instant, SystemTime)> = None;
    while let Some(c) = rx.recv().await {
        let (dir, text) = match c {
            Captured::Text(dir, text) => (dir, text),
            Captured::Audio(dir, n) => {
                session.audio(dir, n);
                continue;
            }
            Captured::Lost => {
                session.lost();
                continue;
            }
        };
        match session.event(dir, &text) {
            Step::Continue => {}
            Step::ResponseStarted => started = Some((Instant::now(), SystemTime::now())),
            Step::ResponseDone(r) => {
                let (t0, at) = started
                    .take()
                    .unwrap_or_else(|| (Instant::now(), SystemTime::now()));
                let sink = match emit.audit {
                    Audit::BestEffort => Sink::BestEffort(emit.queue.clone()),
                    // A refusal is counted and logged by the queue.
                    Audit::Required => match emit.queue.try_reserve() {
                        Ok(r) => Sink::Reserved(r),
                        Err(_) => continue,
                    },
                };
                let meta = RequestMeta {
                    id: ExchangeId::new(),
                    started_at: at,
                    t0,
                    ..emit.meta.clone()
                };
                let rec = Recording::start(meta, sink);
                rec.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .realtime_response(
                        Bytes::from(r.request.to_string()),
                        Bytes::from(r.response.to_string()),
                        emit.meta.id.to_string(),
                    );
                // Dropping the last handle emits the exchange.
                drop(rec);
            }
        }
    }
    session.totals().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: &[u8]) -> (FrameHeader, u64) {
        let mut c = std::io::Cursor::new(bytes);
        FrameHeader::parse(&mut c).unwrap().unwrap()
    }

    #[test]
    fn fragmented_masked_text_is_reassembled_and_audio_is_only_sized() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut cap = Capture::new(Direction::Client, tx);
        let key = [1, 2, 3, 4];
        let mask = |data: &[u8], from: usize| -> Vec<u8> {
            data.iter()
                .enumerate()
                .map(|(i, b)| b ^ key[(from + i) % 4])
                .collect()
        };
        // A text message in two frames (FIN 0, then a continuation with FIN 1), a ping
        // between them, each frame's payload fed in pieces.
        let text = br#"{"type":"conversation.item.create","item":{"type":"message"}}"#;
        let (a, b) = text.split_at(20);
        cap.header(&header(&[0x01, 0x80 | a.len() as u8, 1, 2, 3, 4]).0);
        for piece in mask(a, 0).chunks(3) {
            cap.payload(piece);
        }
        cap.frame_end();
        cap.header(&header(&[0x89, 0x80, 9, 9, 9, 9]).0);
        cap.frame_end();
        cap.header(&header(&[0x80, 0x80 | b.len() as u8, 1, 2, 3, 4]).0);
        cap.payload(&mask(b, 0));
        cap.frame_end();
        match rx.try_recv().unwrap() {
            Captured::Text(Direction::Client, got) => assert_eq!(&got[..], &text[..]),
            other => panic!("{other:?}"),
        }
        // An audio append is sized, not copied.
        let audio = format!(
            r#"{{"type":"input_audio_buffer.append","audio":"{}"}}"#,
            "A".repeat(4000)
        );
        let mut h = vec![0x81, 0x80 | 126];
        h.extend_from_slice(&(audio.len() as u16).to_be_bytes());
        h.extend_from_slice(&key);
        cap.header(&header(&h).0);
        cap.payload(&mask(audio.as_bytes(), 0));
        assert!(cap.buf.is_empty(), "audio is not buffered");
        cap.frame_end();
        match rx.try_recv().unwrap() {
            Captured::Audio(Direction::Client, n) => assert_eq!(n, audio.len() as u64),
            other => panic!("{other:?}"),
        }
        // Compressed (RSV1) text cannot be read: lost. Binary: ignored.
        cap.header(&header(&[0xC1, 0x82, 1, 2, 3, 4]).0);
        cap.payload(&[0, 0]);
        cap.frame_end();
        assert!(matches!(rx.try_recv().unwrap(), Captured::Lost));
        cap.header(&header(&[0x82, 0x82, 1, 2, 3, 4]).0);
        cap.payload(&[0, 0]);
        cap.frame_end();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_channel_counts_the_event_as_lost_instead_of_waiting() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut cap = Capture::new(Direction::Server, tx);
        for _ in 0..3 {
            cap.header(&header(&[0x81, 0x02]).0);
            cap.payload(b"{}");
            cap.frame_end();
        }
        assert!(matches!(rx.try_recv().unwrap(), Captured::Text(..)));
        assert!(rx.try_recv().is_err(), "the rest did not fit");
        assert_eq!(cap.dropped, 2);
    }
}
