//! One lane per Action Cable stream for the broadcasts being stored: a stream's
//! broadcasts are stored one after another (the next sent when the last is
//! acknowledged), so one that JetStream did not acknowledge — its leader lost, a
//! timeout — is tried again before any later one of that stream is sent, and clients
//! see them in the order this process published them. Different streams go in
//! parallel.

use std::collections::{HashMap, VecDeque};

/// The lanes: for each stream with something in flight or waiting, whether one is in
/// flight, and what waits behind it, oldest first.
pub(super) struct Lanes<T> {
    lanes: HashMap<String, Lane<T>>,
    waiting: usize,
}

struct Lane<T> {
    in_flight: bool,
    queue: VecDeque<T>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Lanes {
            lanes: HashMap::new(),
            waiting: 0,
        }
    }
}

impl<T> Lanes<T> {
    /// A new item of `stream`: returned to be sent now when its lane is free (and
    /// `paused` is false), else kept behind the lane's others.
    pub fn admit(&mut self, stream: &str, item: T, paused: bool) -> Option<T> {
        match self.lanes.get_mut(stream) {
            Some(lane) => {
                lane.queue.push_back(item);
                self.waiting += 1;
                None
            }
            None => {
                let lane = Lane {
                    in_flight: !paused,
                    queue: VecDeque::new(),
                };
                self.lanes.insert(stream.to_string(), lane);
                if paused {
                    self.lanes.get_mut(stream)?.queue.push_back(item);
                    self.waiting += 1;
                    return None;
                }
                Some(item)
            }
        }
    }

    /// `stream`'s item in flight was stored: its next, to be sent now (unless
    /// `paused`).
    pub fn acked(&mut self, stream: &str, paused: bool) -> Option<T> {
        let lane = self.lanes.get_mut(stream)?;
        lane.in_flight = false;
        if paused {
            return None;
        }
        self.next_of(stream)
    }

    /// `stream`'s item in flight was not stored: it goes first in its lane again.
    pub fn failed(&mut self, stream: &str, item: T) {
        let lane = self
            .lanes
            .entry(stream.to_string())
            .or_insert_with(|| Lane {
                in_flight: false,
                queue: VecDeque::new(),
            });
        lane.in_flight = false;
        lane.queue.push_front(item);
        self.waiting += 1;
    }

    /// After a pause: the first item of every lane with none in flight, up to `max`.
    pub fn resume(&mut self, max: usize) -> Vec<T> {
        let idle: Vec<String> = self
            .lanes
            .iter()
            .filter(|(_, lane)| !lane.in_flight)
            .map(|(stream, _)| stream.clone())
            .take(max)
            .collect();
        idle.iter().filter_map(|s| self.next_of(s)).collect()
    }

    /// Items waiting behind the ones in flight.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// The lane's next item, marked in flight; the lane goes when it is empty.
    fn next_of(&mut self, stream: &str) -> Option<T> {
        let lane = self.lanes.get_mut(stream)?;
        match lane.queue.pop_front() {
            Some(item) => {
                lane.in_flight = true;
                self.waiting -= 1;
                Some(item)
            }
            None => {
                self.lanes.remove(stream);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_in_flight_per_stream_others_in_parallel() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit("a", 1, false), Some(1));
        assert_eq!(lanes.admit("a", 2, false), None);
        assert_eq!(lanes.admit("b", 10, false), Some(10));
        assert_eq!(lanes.admit("a", 3, false), None);
        assert_eq!(lanes.waiting(), 2);
        assert_eq!(lanes.acked("a", false), Some(2));
        assert_eq!(lanes.acked("b", false), None);
        assert_eq!(lanes.acked("a", false), Some(3));
        assert_eq!(lanes.acked("a", false), None);
        assert_eq!(lanes.waiting(), 0);
        assert!(lanes.lanes.is_empty());
    }

    #[test]
    fn a_failed_one_goes_again_before_the_later_ones() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit("a", 1, false), Some(1));
        assert_eq!(lanes.admit("a", 2, false), None);
        lanes.failed("a", 1);
        // Paused: nothing is sent, whatever comes in or is acknowledged.
        assert_eq!(lanes.admit("a", 3, true), None);
        assert_eq!(lanes.admit("b", 10, true), None);
        let mut resumed = lanes.resume(10);
        resumed.sort();
        assert_eq!(resumed, vec![1, 10]);
        assert_eq!(lanes.acked("a", false), Some(2));
        assert_eq!(lanes.acked("b", false), None);
        assert_eq!(lanes.acked("a", false), Some(3));
        assert_eq!(lanes.acked("a", false), None);
        assert_eq!(lanes.waiting(), 0);
    }

    #[test]
    fn an_ack_during_a_pause_waits_for_the_resume() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit("a", 1, false), Some(1));
        assert_eq!(lanes.admit("a", 2, false), None);
        assert_eq!(lanes.acked("a", true), None);
        assert_eq!(lanes.resume(1), vec![2]);
        assert!(lanes.resume(1).is_empty());
        assert_eq!(lanes.acked("a", false), None);
        assert!(lanes.lanes.is_empty());
    }
}
