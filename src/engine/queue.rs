//! The waiting queue: requests not yet admitted, or preempted and waiting to run again.
//!
//! One interface, [`RequestQueue`], with an implementation per [`SchedulingPolicy`]. The
//! scheduler only ever looks at the head: it admits from there while the step's budget
//! allows and stops at the first request that does not fit, so the order decides who
//! runs first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use super::request::Request;

/// Which waiting request runs first, and which running request is preempted first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SchedulingPolicy {
    /// First come, first served: arrival order; the latest arrival is preempted first.
    #[default]
    Fcfs,
    /// Lowest `(priority, arrival)` first; the highest is preempted first.
    Priority,
}

impl SchedulingPolicy {
    /// An empty waiting queue ordered by this policy.
    pub fn new_queue(self) -> Box<dyn RequestQueue> {
        match self {
            SchedulingPolicy::Fcfs => Box::new(FcfsQueue::default()),
            SchedulingPolicy::Priority => Box::new(PriorityQueue::default()),
        }
    }

    /// The order in which running requests are preempted: the request with the *largest*
    /// key goes first. (`arrival_seq` is unique, so keys never tie.)
    pub fn preemption_key(self, request: &Request) -> (i64, u64) {
        match self {
            SchedulingPolicy::Fcfs => (0, request.arrival_seq()),
            SchedulingPolicy::Priority => (request.priority(), request.arrival_seq()),
        }
    }
}

/// A queue of waiting requests, owning them.
pub trait RequestQueue: fmt::Debug + Send {
    /// Adds a newly arrived request.
    fn push_back(&mut self, request: Request);

    /// Puts a preempted request back, ahead of the requests that arrived after it; in FCFS
    /// at the very front, so a preempted request resumes before anything new starts.
    fn push_front(&mut self, request: Request);

    /// The request to admit next.
    fn peek(&self) -> Option<&Request>;

    /// Takes the request to admit next.
    fn pop(&mut self) -> Option<Request>;

    /// Takes the request with this id out of the queue, wherever it is.
    fn remove(&mut self, request_id: &str) -> Option<Request>;

    /// Requests waiting.
    fn len(&self) -> usize;

    /// Whether no request waits.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The waiting requests, in the order they would be admitted.
    fn iter(&self) -> Box<dyn Iterator<Item = &Request> + '_>;
}

/// First come, first served.
#[derive(Debug, Default)]
pub struct FcfsQueue {
    requests: VecDeque<Request>,
}

impl RequestQueue for FcfsQueue {
    fn push_back(&mut self, request: Request) {
        self.requests.push_back(request);
    }

    fn push_front(&mut self, request: Request) {
        self.requests.push_front(request);
    }

    fn peek(&self) -> Option<&Request> {
        self.requests.front()
    }

    fn pop(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    fn remove(&mut self, request_id: &str) -> Option<Request> {
        // A linear search: removal is for aborts, rare next to pushes and pops.
        let index = self
            .requests
            .iter()
            .position(|r| r.request_id() == request_id)?;
        self.requests.remove(index)
    }

    fn len(&self) -> usize {
        self.requests.len()
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &Request> + '_> {
        Box::new(self.requests.iter())
    }
}

/// `(priority, arrival_seq, insertion)`: the last part keeps two requests apart even if a
/// caller reuses an arrival sequence number.
type PriorityKey = (i64, u64, u64);

/// Lowest `(priority, arrival_seq)` first.
#[derive(Debug, Default)]
pub struct PriorityQueue {
    requests: BTreeMap<PriorityKey, Request>,
    keys: HashMap<String, PriorityKey>,
    insertions: u64,
}

impl PriorityQueue {
    fn insert(&mut self, request: Request) {
        self.insertions += 1;
        let key = (request.priority(), request.arrival_seq(), self.insertions);
        // Ids are unique in the scheduler; should a caller reuse one, both requests stay
        // queued and `remove` finds the newer.
        self.keys.insert(request.request_id().to_owned(), key);
        self.requests.insert(key, request);
    }
}

impl RequestQueue for PriorityQueue {
    fn push_back(&mut self, request: Request) {
        self.insert(request);
    }

    /// A preempted request keeps its original place: its key orders it before every later
    /// arrival of the same priority.
    fn push_front(&mut self, request: Request) {
        self.insert(request);
    }

    fn peek(&self) -> Option<&Request> {
        self.requests.values().next()
    }

    fn pop(&mut self) -> Option<Request> {
        let (key, request) = self.requests.pop_first()?;
        if self.keys.get(request.request_id()) == Some(&key) {
            self.keys.remove(request.request_id());
        }
        Some(request)
    }

    fn remove(&mut self, request_id: &str) -> Option<Request> {
        let key = self.keys.remove(request_id)?;
        self.requests.remove(&key)
    }

    fn len(&self) -> usize {
        self.requests.len()
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &Request> + '_> {
        Box::new(self.requests.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, priority: i64, arrival_seq: u64) -> Request {
        let mut request = Request::new(id, vec![1]).with_priority(priority);
        request.set_arrival_seq(arrival_seq);
        request
    }

    fn ids(queue: &dyn RequestQueue) -> Vec<&str> {
        queue.iter().map(Request::request_id).collect()
    }

    #[test]
    fn fcfs_keeps_arrival_order_and_preempted_go_first() {
        let mut queue = SchedulingPolicy::Fcfs.new_queue();
        queue.push_back(request("a", 5, 1));
        queue.push_back(request("b", -5, 2));
        queue.push_front(request("p", 9, 0));
        assert_eq!(ids(queue.as_ref()), ["p", "a", "b"]);
        assert_eq!(queue.remove("a").map(|r| r.arrival_seq()), Some(1));
        assert!(queue.remove("a").is_none());
        assert_eq!(queue.peek().map(Request::request_id), Some("p"));
        assert_eq!(queue.pop().map(|r| r.arrival_seq()), Some(0));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.pop().map(|r| r.arrival_seq()), Some(2));
        assert!(queue.is_empty());
        assert!(queue.pop().is_none());
    }

    #[test]
    fn priority_orders_by_priority_then_arrival() {
        let mut queue = SchedulingPolicy::Priority.new_queue();
        queue.push_back(request("late-urgent", -1, 4));
        queue.push_back(request("normal-1", 0, 1));
        queue.push_back(request("background", 10, 0));
        queue.push_back(request("normal-3", 0, 3));
        // Preempted: back in its place by arrival, ahead of normal-3.
        queue.push_front(request("normal-2", 0, 2));
        assert_eq!(
            ids(queue.as_ref()),
            [
                "late-urgent",
                "normal-1",
                "normal-2",
                "normal-3",
                "background"
            ]
        );
        assert_eq!(queue.remove("normal-2").map(|r| r.arrival_seq()), Some(2));
        assert!(queue.remove("normal-2").is_none());
        assert_eq!(queue.peek().map(Request::request_id), Some("late-urgent"));
        let popped: Vec<_> = std::iter::from_fn(|| queue.pop())
            .map(|r| r.request_id().to_owned())
            .collect();
        assert_eq!(
            popped,
            ["late-urgent", "normal-1", "normal-3", "background"]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn preemption_keys_pick_the_latest_or_least_urgent() {
        let early_background = request("a", 10, 1);
        let late_urgent = request("b", -10, 2);
        let fcfs = SchedulingPolicy::Fcfs;
        let priority = SchedulingPolicy::Priority;
        assert!(fcfs.preemption_key(&late_urgent) > fcfs.preemption_key(&early_background));
        assert!(priority.preemption_key(&early_background) > priority.preemption_key(&late_urgent));
    }
}
