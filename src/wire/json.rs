//! JSON rendering of server messages (PROTOCOL §6): one object per message,
//! `"type"` naming the oneof, every field always present under its protobuf
//! name, prices and sizes as exact decimal strings, levels as `[price, size]`
//! pairs in `"bids"` and `"asks"` (deltas too, instead of `updates`).
//!
//! Run on the ingest thread (market data, once per message and only while some
//! connection wants JSON) and on workers (control answers). Allocation: appends
//! to the caller's buffer only.

use std::fmt::Write as _;

use super::decimal::{clamp_decimals, format_decimal};
use super::pb::{self, server_message::Body};

/// Decimals of a symbol, for rendering its prices and sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decimals {
    pub price: u32,
    pub size: u32,
}

/// Appends `s` as a JSON string literal (RFC 8259 §7 escaping).
pub fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_str_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(out, s);
    }
    out.push(']');
}

fn write_pair(out: &mut String, price: i64, size: i64, d: Decimals) {
    out.push_str("[\"");
    format_decimal(price, d.price, out);
    out.push_str("\",\"");
    format_decimal(size, d.size, out);
    out.push_str("\"]");
}

fn write_levels(out: &mut String, levels: &[pb::Level], d: Decimals) {
    out.push('[');
    for (i, l) in levels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_pair(out, l.price, l.size, d);
    }
    out.push(']');
}

fn write_updates(out: &mut String, updates: &[pb::LevelUpdate], side: pb::Side, d: Decimals) {
    out.push('[');
    let mut first = true;
    for u in updates.iter().filter(|u| u.side == side as i32) {
        if !first {
            out.push(',');
        }
        first = false;
        write_pair(out, u.price, u.size, d);
    }
    out.push(']');
}

/// A book message's channel: its full name in JSON, where protobuf's ""
/// means `book` (PROTOCOL §9).
fn write_channel(out: &mut String, channel: &str) {
    if channel.is_empty() {
        out.push_str("\"book\"");
    } else {
        write_json_str(out, channel);
    }
}

fn side_name(side: i32) -> &'static str {
    match pb::Side::try_from(side) {
        Ok(pb::Side::Bid) => "bid",
        Ok(pb::Side::Ask) => "ask",
        _ => "",
    }
}

/// Appends the JSON rendering of `msg`. `decimals` are the symbol's, used for
/// deltas and trades (a snapshot carries its own); ignored for control messages.
/// The `"type"` of a JSON object made by [`render`] (its first member):
/// the SSE event name (PROTOCOL §11). `"message"` for anything else.
pub fn type_of(json: &[u8]) -> &str {
    json.strip_prefix(b"{\"type\":\"")
        .and_then(|rest| {
            let end = rest.iter().position(|&b| b == b'"')?;
            std::str::from_utf8(&rest[..end]).ok()
        })
        .filter(|t| !t.is_empty())
        .unwrap_or("message")
}

pub fn render(msg: &pb::ServerMessage, decimals: Decimals, out: &mut String) {
    // Writing to a String cannot fail: the `let _ =` below discard `Ok(())`.
    match &msg.body {
        Some(Body::Snapshot(s)) => {
            let d = Decimals {
                price: clamp_decimals(s.price_decimals),
                size: clamp_decimals(s.size_decimals),
            };
            out.push_str("{\"type\":\"snapshot\",\"symbol\":");
            write_json_str(out, &s.symbol);
            let _ = write!(out, ",\"seq\":{},\"bids\":", s.seq);
            write_levels(out, &s.bids, d);
            out.push_str(",\"asks\":");
            write_levels(out, &s.asks, d);
            let _ = write!(
                out,
                ",\"price_decimals\":{},\"size_decimals\":{},\"exchange_ts_ns\":{},\"ingest_ts_ns\":{},\"checksum\":{},\"epoch\":{},\"channel\":",
                s.price_decimals,
                s.size_decimals,
                s.exchange_ts_ns,
                s.ingest_ts_ns,
                s.checksum,
                s.epoch
            );
            write_channel(out, &s.channel);
            out.push('}');
        }
        Some(Body::Delta(dl)) => {
            out.push_str("{\"type\":\"delta\",\"symbol\":");
            write_json_str(out, &dl.symbol);
            let _ = write!(out, ",\"seq\":{},\"bids\":", dl.seq);
            write_updates(out, &dl.updates, pb::Side::Bid, decimals);
            out.push_str(",\"asks\":");
            write_updates(out, &dl.updates, pb::Side::Ask, decimals);
            let _ = write!(
                out,
                ",\"exchange_ts_ns\":{},\"ingest_ts_ns\":{},\"checksum\":{},\"prev_seq\":{},\"channel\":",
                dl.exchange_ts_ns, dl.ingest_ts_ns, dl.checksum, dl.prev_seq
            );
            write_channel(out, &dl.channel);
            out.push('}');
        }
        Some(Body::Trade(t)) => {
            out.push_str("{\"type\":\"trade\",\"symbol\":");
            write_json_str(out, &t.symbol);
            let _ = write!(out, ",\"seq\":{},\"price\":\"", t.seq);
            format_decimal(t.price, decimals.price, out);
            out.push_str("\",\"size\":\"");
            format_decimal(t.size, decimals.size, out);
            let _ = write!(
                out,
                "\",\"aggressor\":\"{}\",\"exchange_ts_ns\":{},\"ingest_ts_ns\":{},\"trade_id\":",
                side_name(t.aggressor),
                t.exchange_ts_ns,
                t.ingest_ts_ns
            );
            write_json_str(out, &t.trade_id);
            out.push('}');
        }
        Some(Body::Subscribed(s)) => {
            let _ = write!(
                out,
                "{{\"type\":\"subscribed\",\"id\":{},\"symbols\":",
                s.id
            );
            write_str_array(out, &s.symbols);
            out.push_str(",\"channels\":");
            write_str_array(out, &s.channels);
            out.push_str(",\"instruments\":[");
            for (i, ins) in s.instruments.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"symbol\":");
                write_json_str(out, &ins.symbol);
                let _ = write!(
                    out,
                    ",\"price_decimals\":{},\"size_decimals\":{},\"epoch\":{}}}",
                    ins.price_decimals, ins.size_decimals, ins.epoch
                );
            }
            out.push_str("],\"resumed\":");
            write_str_array(out, &s.resumed);
            out.push('}');
        }
        Some(Body::Unsubscribed(u)) => {
            let _ = write!(
                out,
                "{{\"type\":\"unsubscribed\",\"id\":{},\"symbols\":",
                u.id
            );
            write_str_array(out, &u.symbols);
            out.push_str(",\"channels\":");
            write_str_array(out, &u.channels);
            out.push('}');
        }
        Some(Body::Error(e)) => {
            let _ = write!(out, "{{\"type\":\"error\",\"id\":{},\"code\":", e.id);
            write_json_str(out, &e.code);
            out.push_str(",\"message\":");
            write_json_str(out, &e.message);
            out.push('}');
        }
        Some(Body::Stale(s)) => {
            out.push_str("{\"type\":\"stale\",\"symbol\":");
            write_json_str(out, &s.symbol);
            let _ = write!(out, ",\"dropped\":{},\"reason\":", s.dropped);
            write_json_str(out, &s.reason);
            out.push('}');
        }
        Some(Body::Authenticated(a)) => {
            let _ = write!(out, "{{\"type\":\"authenticated\",\"id\":{},\"sub\":", a.id);
            write_json_str(out, &a.sub);
            let _ = write!(out, ",\"expires_at_ns\":{}}}", a.expires_at_ns);
        }
        None => out.push_str("{\"type\":\"\"}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_str(body: Body, d: Decimals) -> String {
        let mut s = String::new();
        render(&pb::ServerMessage { body: Some(body) }, d, &mut s);
        s
    }

    #[test]
    fn snapshot_renders_every_field_with_exact_decimals() {
        let s = render_str(
            Body::Snapshot(pb::BookSnapshot {
                symbol: "BTC-USD".into(),
                seq: 42,
                bids: vec![pb::Level {
                    price: 3000050,
                    size: 12500,
                }],
                asks: vec![pb::Level {
                    price: 3000100,
                    size: 5000,
                }],
                price_decimals: 2,
                size_decimals: 4,
                exchange_ts_ns: 1,
                ingest_ts_ns: 2,
                checksum: 7,
                epoch: 0,
                channel: String::new(),
            }),
            Decimals::default(),
        );
        assert_eq!(
            s,
            r#"{"type":"snapshot","symbol":"BTC-USD","seq":42,"bids":[["30000.50","1.2500"]],"asks":[["30001.00","0.5000"]],"price_decimals":2,"size_decimals":4,"exchange_ts_ns":1,"ingest_ts_ns":2,"checksum":7,"epoch":0,"channel":"book"}"#
        );
        sonic_rs::from_str::<sonic_rs::Value>(&s).expect("valid JSON");
    }

    #[test]
    fn delta_splits_updates_into_bids_and_asks() {
        let s = render_str(
            Body::Delta(pb::BookDelta {
                symbol: "ETH-USD".into(),
                seq: 9,
                updates: vec![
                    pb::LevelUpdate {
                        side: pb::Side::Bid as i32,
                        price: -150,
                        size: 0,
                    },
                    pb::LevelUpdate {
                        side: pb::Side::Ask as i32,
                        price: 200,
                        size: 3,
                    },
                    pb::LevelUpdate {
                        side: pb::Side::Bid as i32,
                        price: 100,
                        size: 10,
                    },
                ],
                exchange_ts_ns: 5,
                ingest_ts_ns: 6,
                checksum: 8,
                channel: String::new(),
                prev_seq: 0,
            }),
            Decimals { price: 2, size: 0 },
        );
        assert_eq!(
            s,
            r#"{"type":"delta","symbol":"ETH-USD","seq":9,"bids":[["-1.50","0"],["1.00","10"]],"asks":[["2.00","3"]],"exchange_ts_ns":5,"ingest_ts_ns":6,"checksum":8,"prev_seq":0,"channel":"book"}"#
        );
    }

    #[test]
    fn trade_and_control_messages_render_and_escape() {
        let s = render_str(
            Body::Trade(pb::Trade {
                symbol: "BTC-USD".into(),
                seq: 1,
                price: 3000050,
                size: 100,
                aggressor: pb::Side::Ask as i32,
                exchange_ts_ns: 3,
                ingest_ts_ns: 4,
                trade_id: "t-\"1\"".into(),
            }),
            Decimals { price: 2, size: 4 },
        );
        assert_eq!(
            s,
            r#"{"type":"trade","symbol":"BTC-USD","seq":1,"price":"30000.50","size":"0.0100","aggressor":"ask","exchange_ts_ns":3,"ingest_ts_ns":4,"trade_id":"t-\"1\""}"#
        );
        let e = render_str(
            Body::Error(pb::Error {
                id: 3,
                code: "bad_request".into(),
                message: "line\nbreak\u{1}".into(),
            }),
            Decimals::default(),
        );
        assert_eq!(
            e,
            r#"{"type":"error","id":3,"code":"bad_request","message":"line\nbreak\u0001"}"#
        );
        let v: sonic_rs::Value = sonic_rs::from_str(&e).unwrap();
        assert_eq!(
            sonic_rs::JsonValueTrait::as_str(&v["message"]),
            Some("line\nbreak\u{1}")
        );
        let sub = render_str(
            Body::Subscribed(pb::Subscribed {
                id: 7,
                symbols: vec!["BTC-USD".into()],
                channels: vec!["book".into(), "trades".into()],
                instruments: vec![pb::Instrument {
                    symbol: "BTC-USD".into(),
                    price_decimals: 2,
                    size_decimals: 4,
                    epoch: 0,
                }],
                resumed: Vec::new(),
            }),
            Decimals::default(),
        );
        assert_eq!(
            sub,
            r#"{"type":"subscribed","id":7,"symbols":["BTC-USD"],"channels":["book","trades"],"instruments":[{"symbol":"BTC-USD","price_decimals":2,"size_decimals":4,"epoch":0}],"resumed":[]}"#
        );
        let st = render_str(
            Body::Stale(pb::Stale {
                symbol: "X".into(),
                dropped: 0,
                reason: "feed_down".into(),
            }),
            Decimals::default(),
        );
        assert_eq!(
            st,
            r#"{"type":"stale","symbol":"X","dropped":0,"reason":"feed_down"}"#
        );
        let au = render_str(
            Body::Authenticated(pb::Authenticated {
                id: 1,
                sub: "al\"ice".into(),
                expires_at_ns: 1_732_870_000_000_000_000,
            }),
            Decimals::default(),
        );
        assert_eq!(
            au,
            r#"{"type":"authenticated","id":1,"sub":"al\"ice","expires_at_ns":1732870000000000000}"#
        );
        let un = render_str(
            Body::Unsubscribed(pb::Unsubscribed {
                id: 8,
                symbols: vec!["X".into()],
                channels: vec!["book".into()],
            }),
            Decimals::default(),
        );
        assert_eq!(
            un,
            r#"{"type":"unsubscribed","id":8,"symbols":["X"],"channels":["book"]}"#
        );
    }
}
