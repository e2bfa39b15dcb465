//! Scheduler scenarios, each run by one [`check`] against a fake model.
//!
//! The fake model keeps a paged KV cache of `(token, position)` per slot: each step it writes
//! the scheduled tokens into the slots their block tables name, reads the whole context back
//! through the block table, and returns a hash of it as the next token. So a wrong block
//! table, a prefix-cache hit on the wrong content, a block written while shared, or a token
//! lost or repeated across preemption changes the output, and [`check`] compares every
//! output with a plain generation loop that knows nothing of scheduling. Each step it also
//! checks the budget, the sequence limit and the block accounting, and at the end that
//! nothing leaked.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::engine::kv_cache::BlockId;
use crate::engine::output::NewRequestData;

const VOCAB: u32 = 50_000;

/// The fake model: the next token is a hash of the whole sequence.
fn next_token(tokens: &[u32]) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &token in tokens {
        hash ^= u64::from(token);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ((hash >> 24) % u64::from(VOCAB)) as u32
}

/// Distinct, deterministic prompt content.
fn tokens(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 1 + (seed.wrapping_mul(7919).wrapping_add(i.wrapping_mul(31))) % (VOCAB - 1))
        .collect()
}

/// What ends a request besides length (the engine's output processor in real life).
#[derive(Clone, Copy, Debug, Default)]
enum Stop {
    #[default]
    Never,
    /// One end-of-sequence token.
    Token(u32),
    /// Every token divisible by this (a frequent stop, for random workloads).
    Multiple(u32),
}

impl Stop {
    fn stops(self, token: u32) -> bool {
        match self {
            Stop::Never => false,
            Stop::Token(eos) => token == eos,
            Stop::Multiple(n) => token.is_multiple_of(n),
        }
    }
}

/// The tokens and finish reason of an uninterrupted generation.
fn reference(
    prompt: &[u32],
    max_tokens: usize,
    max_len: usize,
    stop: Stop,
) -> (Vec<u32>, FinishReason) {
    let mut sequence = prompt.to_vec();
    let mut output = Vec::new();
    loop {
        let token = next_token(&sequence);
        sequence.push(token);
        output.push(token);
        if stop.stops(token) {
            return (output, FinishReason::Stop);
        }
        if output.len() >= max_tokens || sequence.len() >= max_len {
            return (output, FinishReason::Length);
        }
    }
}

struct FakeModel {
    block_size: usize,
    slots: Vec<Option<(u32, usize)>>,
}

impl FakeModel {
    fn new(config: &SchedulerConfig) -> Self {
        Self {
            block_size: config.block_size,
            slots: vec![None; config.num_blocks * config.block_size],
        }
    }

    fn run(&mut self, scheduler: &Scheduler, output: &SchedulerOutput) -> Vec<u32> {
        let block_size = self.block_size;
        let pool = scheduler.kv_cache().pool();
        let mut written = HashSet::new();
        output
            .batch()
            .map(|seq| {
                let context = seq.num_computed_tokens + seq.token_ids.len();
                assert!(context <= scheduler.max_sequence_len());
                let slot = |position: usize| {
                    seq.block_table[position / block_size].index() * block_size
                        + position % block_size
                };
                for (i, &token) in seq.token_ids.iter().enumerate() {
                    let position = seq.num_computed_tokens + i;
                    let block = seq.block_table[position / block_size];
                    assert_eq!(
                        pool.ref_count(block),
                        1,
                        "{} writes into shared block {block:?}",
                        seq.request_id
                    );
                    assert!(written.insert(slot(position)), "one slot written twice");
                    self.slots[slot(position)] = Some((token, position));
                }
                let sequence: Vec<u32> = (0..context)
                    .map(|position| match self.slots[slot(position)] {
                        Some((token, at)) if at == position => token,
                        other => panic!("{}: position {position} holds {other:?}", seq.request_id),
                    })
                    .collect();
                let samples = context == scheduler.request(seq.request_id).unwrap().num_tokens();
                assert_eq!(seq.samples, samples);
                // The scheduler ignores samples it does not keep: feed it nonsense.
                if samples {
                    next_token(&sequence)
                } else {
                    VOCAB + 1
                }
            })
            .collect()
    }
}

#[derive(Clone, Debug)]
struct Arrival {
    id: String,
    prompt: Vec<u32>,
    max_tokens: usize,
    priority: i64,
    /// Added right before this step's `schedule()`.
    step: u64,
}

fn arrive(id: &str, prompt: Vec<u32>, max_tokens: usize) -> Arrival {
    Arrival {
        id: id.to_owned(),
        prompt,
        max_tokens,
        priority: 0,
        step: 1,
    }
}

impl Arrival {
    fn at(mut self, step: u64) -> Self {
        self.step = step;
        self
    }

    fn priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }
}

#[derive(Clone, Debug)]
struct Case {
    config: SchedulerConfig,
    arrivals: Vec<Arrival>,
    /// `(step, id)`: aborted right before that step's `schedule()`.
    aborts: Vec<(u64, String)>,
    stop: Stop,
}

fn case(config: SchedulerConfig, arrivals: Vec<Arrival>) -> Case {
    Case {
        config,
        arrivals,
        aborts: Vec::new(),
        stop: Stop::Never,
    }
}

/// A config with the given budget, sequence limit and pool, everything else default.
fn config(
    max_num_batched_tokens: usize,
    max_num_seqs: usize,
    block_size: usize,
    num_blocks: usize,
    max_model_len: usize,
) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens,
        max_num_seqs,
        block_size,
        ..SchedulerConfig::new(num_blocks, max_model_len)
    }
}

#[derive(Debug, Default)]
struct Report {
    steps: Vec<SchedulerOutput>,
    finished: HashMap<String, Request>,
    finish_order: Vec<String>,
    refused: HashMap<String, AddRequestError>,
    total_preemptions: u64,
    prefix_stats: PrefixCacheStats,
}

impl Report {
    fn request(&self, id: &str) -> &Request {
        &self.finished[id]
    }

    /// `(step, tokens, admitted this step, tokens computed before)` for each step `id` ran.
    fn runs(&self, id: &str) -> Vec<(u64, usize, bool, usize)> {
        let mut runs = Vec::new();
        for output in &self.steps {
            for seq in output.batch() {
                if seq.request_id == id {
                    let admitted = output.scheduled_new.iter().any(|r| r.request_id == id);
                    runs.push((
                        output.step,
                        seq.token_ids.len(),
                        admitted,
                        seq.num_computed_tokens,
                    ));
                }
            }
        }
        runs
    }

    fn step(&self, step: u64) -> &SchedulerOutput {
        self.steps
            .iter()
            .find(|o| o.step == step)
            .expect("step ran")
    }

    fn batch_ids(&self, step: u64) -> Vec<&str> {
        self.step(step).batch().map(|s| s.request_id).collect()
    }

    fn new_request(&self, id: &str) -> &NewRequestData {
        self.steps
            .iter()
            .flat_map(|o| &o.scheduled_new)
            .find(|r| r.request_id == id)
            .expect("admitted")
    }
}

const MAX_STEPS: u64 = 20_000;

/// Runs `case` to the end, checking the invariants every step and every output against
/// [`reference`].
fn check(case: &Case) -> Report {
    let config = &case.config;
    let mut scheduler = Scheduler::new(config.clone()).expect("valid config");
    let mut model = FakeModel::new(config);
    let mut report = Report::default();
    let last_event = case
        .arrivals
        .iter()
        .map(|a| a.step)
        .chain(case.aborts.iter().map(|(step, _)| *step))
        .max()
        .unwrap_or(0);

    for step in 1.. {
        assert!(step <= MAX_STEPS, "no progress after {MAX_STEPS} steps");
        for arrival in case.arrivals.iter().filter(|a| a.step == step) {
            let request =
                Request::new(&arrival.id, arrival.prompt.clone()).with_priority(arrival.priority);
            if let Err(error) = scheduler.add_request(request) {
                report.refused.insert(arrival.id.clone(), error);
            }
        }
        for (_, id) in case.aborts.iter().filter(|(at, _)| *at == step) {
            if let Some(request) = scheduler.abort_request(id) {
                assert_eq!(request.finish_reason(), Some(FinishReason::Abort));
                assert!(scheduler.kv_cache().block_table(id).is_empty());
                report.finish_order.push(id.clone());
                report.finished.insert(id.clone(), request);
            }
        }
        if !scheduler.has_unfinished_requests() && step >= last_event {
            break;
        }

        // Idle steps are scheduled too (an empty batch), so that step numbers match.
        let output = scheduler.schedule();
        assert_eq!(output.step, step);
        check_step(&scheduler, &output);
        let sampled = model.run(&scheduler, &output);
        let update = scheduler
            .update_from_output(&output, &sampled)
            .expect("update");
        // The stop rules, as the engine's output processor applies them (stop tokens
        // first, then length); the scheduler only appended.
        let max_len = scheduler.max_sequence_len();
        let ended: Vec<(usize, FinishReason)> = update
            .new_tokens
            .iter()
            .filter_map(|&index| {
                let request = scheduler.running_request(index).expect("running");
                let max_tokens = case
                    .arrivals
                    .iter()
                    .find(|a| a.id == request.request_id())
                    .expect("arrived")
                    .max_tokens;
                let token = request.last_output_token().expect("a token was appended");
                let reason = if case.stop.stops(token) {
                    Some(FinishReason::Stop)
                } else if request.num_output_tokens() >= max_tokens
                    || request.num_tokens() >= max_len
                {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                reason.map(|reason| (index, reason))
            })
            .collect();
        for request in scheduler.finish_running(&ended) {
            let id = request.request_id().to_owned();
            assert!(scheduler.kv_cache().block_table(&id).is_empty());
            assert!(scheduler.request(&id).is_none());
            report.finish_order.push(id.clone());
            report.finished.insert(id, request);
        }
        report.steps.push(output);
    }

    assert!(scheduler.is_empty(), "leak: {scheduler:?}");
    report.total_preemptions = scheduler.total_preemptions();
    report.prefix_stats = scheduler.kv_cache().prefix_cache_stats();
    let max_len = scheduler.max_sequence_len();
    for arrival in &case.arrivals {
        if let Some(error) = report.refused.get(&arrival.id) {
            assert!(
                arrival.prompt.len() > max_len,
                "{} refused: {error}",
                arrival.id
            );
            continue;
        }
        let request = &report.finished[&arrival.id];
        assert_eq!(request.prompt_ids(), arrival.prompt);
        let (expected, reason) = reference(&arrival.prompt, arrival.max_tokens, max_len, case.stop);
        match request.finish_reason() {
            Some(FinishReason::Abort) => assert!(
                expected.starts_with(request.output_ids()),
                "{}: aborted output is not a prefix of the reference",
                arrival.id
            ),
            finish => {
                assert_eq!(request.output_ids(), expected, "{}", arrival.id);
                assert_eq!(finish, Some(reason), "{}", arrival.id);
            }
        }
    }
    report
}

/// The invariants of one step's output, and of the block accounting after it.
fn check_step(scheduler: &Scheduler, output: &SchedulerOutput) {
    let config = scheduler.config();
    assert!(output.total_num_scheduled_tokens <= config.max_num_batched_tokens);
    assert!(output.num_sequences() <= config.max_num_seqs);
    assert!(scheduler.num_running() <= config.max_num_seqs);
    let batch: Vec<_> = output.batch().collect();
    assert_eq!(batch.len(), output.num_scheduled_tokens.len());
    let mut total = 0;
    let mut ids = HashSet::new();
    for (seq, (id, n)) in batch.iter().zip(&output.num_scheduled_tokens) {
        assert_eq!(seq.request_id, id);
        assert_eq!(seq.token_ids.len(), *n);
        assert!(*n > 0);
        assert!(ids.insert(id.as_str()));
        total += n;
    }
    assert_eq!(total, output.total_num_scheduled_tokens);
    for id in &output.preempted {
        assert!(!ids.contains(id.as_str()), "{id} preempted yet scheduled");
    }
    let stats = &output.stats;
    assert_eq!(stats.num_prefill_tokens + stats.num_decode_tokens, total);
    assert_eq!(stats.num_decode_tokens, stats.num_decode_seqs);
    assert_eq!(stats.num_prefill_seqs + stats.num_decode_seqs, batch.len());
    assert_eq!(stats.num_running, scheduler.num_running());
    assert_eq!(stats.num_waiting, scheduler.num_waiting());
    assert_eq!(stats.num_preemptions, output.preempted.len());

    // Every block in use is held by exactly as many running requests as its count says.
    let kv = scheduler.kv_cache();
    let mut holders: HashMap<BlockId, u32> = HashMap::new();
    for request in scheduler.running_requests() {
        let table = kv.block_table(request.request_id());
        assert!(table.len() * kv.block_size() >= request.num_computed_tokens());
        for &block in table {
            *holders.entry(block).or_default() += 1;
        }
    }
    for request in scheduler.waiting_requests() {
        assert!(kv.block_table(request.request_id()).is_empty());
        assert_eq!(request.num_computed_tokens(), 0);
    }
    for (&block, &count) in &holders {
        assert_eq!(kv.pool().ref_count(block), count, "{block:?}");
    }
    assert_eq!(kv.num_total_blocks() - kv.num_free_blocks(), holders.len());
}

#[test]
fn budget_and_max_num_seqs_hold_every_step() {
    let arrivals = (0..12)
        .map(|i| {
            arrive(
                &format!("r{i}"),
                tokens(i, 5 + 5 * i as usize),
                3 + i as usize % 7,
            )
        })
        .collect();
    let report = check(&case(config(32, 4, 4, 256, 128), arrivals));
    // The limits were reached, not just respected.
    let widest = report.steps.iter().map(|o| o.num_sequences()).max();
    let fullest = report
        .steps
        .iter()
        .map(|o| o.total_num_scheduled_tokens)
        .max();
    assert_eq!(widest, Some(4));
    assert_eq!(fullest, Some(32));
    assert_eq!(report.total_preemptions, 0);
}

#[test]
fn long_prompt_is_chunked_behind_decodes() {
    let mut arrivals: Vec<_> = (0..3)
        .map(|i| arrive(&format!("d{i}"), tokens(i, 4), 12))
        .collect();
    arrivals.push(arrive("long", tokens(9, 50), 2).at(3));
    let report = check(&case(config(16, 8, 4, 64, 128), arrivals));

    // 3 decodes take one token each; the prompt gets the other 13, four steps running.
    let runs = report.runs("long");
    assert_eq!(
        runs,
        [
            (3, 13, true, 0),
            (4, 13, false, 13),
            (5, 13, false, 26),
            (6, 11, false, 39),
            (7, 1, false, 50),
        ]
    );
    for step in 3..=6 {
        let output = report.step(step);
        assert_eq!(report.batch_ids(step), ["d0", "d1", "d2", "long"]);
        assert_eq!(output.stats.num_decode_seqs, 3);
        assert_eq!(output.stats.num_prefill_seqs, 1);
        assert_eq!(output.stats.num_prefill_tokens, runs[step as usize - 3].1);
    }
    assert_eq!(report.step(7).stats.num_decode_seqs, 4);
    let long = report.request("long");
    assert_eq!(long.num_computed_prompt_tokens(), 50);
    assert_eq!(long.num_blocks_allocated(), 13);
}

#[test]
fn without_chunked_prefill_a_prompt_waits_until_it_fits_whole() {
    let mut arrivals: Vec<_> = (0..3)
        .map(|i| arrive(&format!("d{i}"), tokens(i, 4), 6))
        .collect();
    arrivals.push(arrive("long", tokens(9, 62), 2).at(2));
    let config = SchedulerConfig {
        enable_chunked_prefill: false,
        ..config(64, 8, 4, 64, 64)
    };
    let report = check(&case(config, arrivals));
    // Steps 2-6 have 3 decodes, leaving 61 tokens: the 62-token prompt waits for them.
    assert_eq!(report.runs("long"), [(7, 62, true, 0), (8, 1, false, 62)]);
    assert_eq!(report.request("long").num_output_tokens(), 2);
}

/// Four requests that need 20 blocks together from a pool of 10.
fn crowded(num_blocks: usize, enable_prefix_caching: bool) -> Case {
    let arrivals = (0..4)
        .map(|i| arrive(&format!("r{i}"), tokens(i, 8), 12))
        .collect();
    let config = SchedulerConfig {
        enable_prefix_caching,
        ..config(64, 8, 4, num_blocks, 40)
    };
    case(config, arrivals)
}

#[test]
fn preempted_requests_finish_with_the_same_tokens() {
    for caching in [true, false] {
        let roomy = check(&crowded(64, caching));
        let tight = check(&crowded(10, caching));
        assert_eq!(roomy.total_preemptions, 0);
        assert!(tight.total_preemptions > 0, "caching {caching}");
        let preempted: u64 = tight
            .finished
            .values()
            .map(|r| u64::from(r.num_preemptions()))
            .sum();
        assert_eq!(preempted, tight.total_preemptions);
        for (id, request) in &roomy.finished {
            assert_eq!(request.output_ids(), tight.request(id).output_ids());
            assert_eq!(
                tight.request(id).finish_reason(),
                Some(FinishReason::Length)
            );
        }
        // Recomputation computed some prompts again.
        let prompt_work: usize = tight
            .finished
            .values()
            .map(Request::num_computed_prompt_tokens)
            .sum();
        assert!(prompt_work > 4 * 8 || caching, "caching {caching}");
    }
}

/// Two 7-token requests filling a 4-block pool (block size 4): at step 3 the first one
/// needs a third block.
fn two_in_a_full_pool(policy: SchedulingPolicy, a_priority: i64, b_priority: i64) -> Report {
    let config = SchedulerConfig {
        policy,
        ..config(64, 8, 4, 4, 16)
    };
    check(&case(
        config,
        vec![
            arrive("a", tokens(1, 7), 6).priority(a_priority),
            arrive("b", tokens(2, 7), 6).priority(b_priority),
        ],
    ))
}

#[test]
fn fcfs_preempts_the_latest_arrival() {
    let report = two_in_a_full_pool(SchedulingPolicy::Fcfs, 0, 0);
    assert_eq!(report.step(3).preempted, ["b"]);
    assert_eq!(report.batch_ids(3), ["a"]);
    assert_eq!(report.request("b").num_preemptions(), 1);
    assert_eq!(report.request("a").num_preemptions(), 0);
    assert_eq!(report.total_preemptions, 1);
    assert_eq!(report.finish_order, ["a", "b"]);
}

#[test]
fn priority_preempts_the_least_urgent() {
    // b is more urgent: admitted first, and a is preempted although it arrived first.
    let report = two_in_a_full_pool(SchedulingPolicy::Priority, 0, -1);
    assert_eq!(report.batch_ids(1), ["b", "a"]);
    assert_eq!(report.step(3).preempted, ["a"]);
    assert_eq!(report.batch_ids(3), ["b"]);
    assert_eq!(report.finish_order, ["b", "a"]);
}

#[test]
fn a_victim_scheduled_earlier_in_the_step_gives_its_budget_back() {
    // Running order is [low, urgent]. At step 3 low's decode fits its blocks and is
    // scheduled first; urgent then needs a block, and low is the victim.
    let config = SchedulerConfig {
        policy: SchedulingPolicy::Priority,
        ..config(64, 8, 4, 4, 16)
    };
    let report = check(&case(
        config,
        vec![
            arrive("low", tokens(1, 5), 10),
            arrive("urgent", tokens(2, 8), 4).priority(-1).at(2),
        ],
    ));
    let step = report.step(3);
    assert_eq!(step.preempted, ["low"]);
    assert_eq!(report.batch_ids(3), ["urgent"]);
    assert_eq!(step.total_num_scheduled_tokens, 1);
    assert_eq!(report.finish_order, ["urgent", "low"]);
    // low finds its first block again in the prefix cache when it resumes.
    assert_eq!(report.request("low").num_cached_blocks_hit(), 1);
}

#[test]
fn prefix_cache_serves_shared_prefixes() {
    let shared = tokens(1, 16);
    let a_prompt = [shared.clone(), tokens(2, 4)].concat();
    let b_prompt = [shared.clone(), tokens(3, 6)].concat();
    let d_prompt = [shared.clone(), tokens(4, 3)].concat();
    let report = check(&case(
        config(64, 8, 4, 64, 64),
        vec![
            arrive("a", a_prompt.clone(), 2),
            // After a finished: its 4 shared blocks are free but cached.
            arrive("b", b_prompt, 2).at(4),
            // The same prompt as a: all 5 blocks are cached, but the last token must be
            // computed, so only 4 are used.
            arrive("c", a_prompt, 2).at(6),
            // Alongside c: both hold the shared blocks at once.
            arrive("d", d_prompt, 2).at(6),
        ],
    ));
    let a = report.new_request("a");
    let b = report.new_request("b");
    assert_eq!(b.num_computed_tokens, 16);
    assert_eq!(b.token_ids.len(), 6);
    assert_eq!(b.block_table[..4], a.block_table[..4]);
    let request = report.request("b");
    assert_eq!(request.num_cached_blocks_hit(), 4);
    assert_eq!(request.num_cached_prompt_tokens(), 16);
    assert_eq!(request.num_computed_prompt_tokens(), 6);
    let b_step = report.step(report.runs("b")[0].0);
    assert_eq!(
        (
            b_step.stats.prefix_cache_queries,
            b_step.stats.prefix_cache_hits
        ),
        (22, 16)
    );

    let c = report.request("c");
    assert_eq!(c.num_cached_blocks_hit(), 4);
    assert_eq!(c.num_computed_prompt_tokens(), 4);
    assert_eq!(report.batch_ids(6), ["c", "d"]);
    let (c, d) = (report.new_request("c"), report.new_request("d"));
    assert_eq!(c.block_table[..4], a.block_table[..4]);
    assert_eq!(d.block_table[..4], a.block_table[..4]);
    assert_eq!(report.request("a").num_cached_blocks_hit(), 0);
    assert_eq!(
        report.prefix_stats,
        PrefixCacheStats {
            queries: 20 + 22 + 20 + 19,
            hits: 3 * 16
        }
    );
}

#[test]
fn identical_prompts_at_once_compute_twice_and_cache_once() {
    let prompt = tokens(5, 12);
    let report = check(&case(
        config(64, 8, 4, 64, 64),
        vec![
            arrive("x", prompt.clone(), 6),
            arrive("y", prompt.clone(), 6),
            arrive("z", prompt, 2).at(5),
        ],
    ));
    // x and y were admitted together, before either computed anything.
    assert_eq!(report.request("y").num_cached_blocks_hit(), 0);
    // z, later, hits the first two blocks (of 3; the last token must be computed).
    assert_eq!(report.request("z").num_cached_blocks_hit(), 2);
}

#[test]
fn least_recently_freed_blocks_are_evicted_first() {
    let (a_prompt, b_prompt) = (tokens(10, 8), tokens(11, 8));
    let report = check(&case(
        config(64, 8, 4, 6, 24),
        vec![
            arrive("a", a_prompt.clone(), 1),
            arrive("b", b_prompt.clone(), 1).at(2),
            // Needs 4 of the 6 blocks: the 2 never used, then a's (freed before b's).
            arrive("c", tokens(12, 16), 1).at(3),
            arrive("e", [b_prompt, vec![7]].concat(), 1).at(4),
            arrive("d", [a_prompt, vec![7]].concat(), 1).at(4),
        ],
    ));
    let (a, b, c) = (
        report.new_request("a"),
        report.new_request("b"),
        report.new_request("c"),
    );
    assert!(a.block_table.iter().all(|blk| c.block_table.contains(blk)));
    assert!(b.block_table.iter().all(|blk| !c.block_table.contains(blk)));
    assert_eq!(report.request("e").num_cached_blocks_hit(), 2);
    assert_eq!(report.new_request("e").block_table[..2], b.block_table[..]);
    assert_eq!(report.request("d").num_cached_blocks_hit(), 0);
}

#[test]
fn abort_frees_waiting_and_running_requests() {
    let mut case = case(
        config(8, 1, 4, 16, 64),
        vec![
            arrive("running", tokens(1, 30), 4),
            arrive("waiting", tokens(2, 5), 4),
            arrive("later", tokens(3, 5), 3).at(4),
        ],
    );
    case.aborts = vec![(2, "waiting".into()), (3, "running".into())];
    let report = check(&case);
    // Mid-prompt when aborted: 16 of 30 tokens computed, nothing generated.
    let running = report.request("running");
    assert_eq!(running.finish_reason(), Some(FinishReason::Abort));
    assert_eq!(running.num_output_tokens(), 0);
    assert_eq!(running.num_computed_tokens(), 16);
    assert_eq!(report.request("waiting").num_blocks_allocated(), 0);
    // Each is gone from the batch from the step after its abort on.
    assert_eq!(report.batch_ids(2), ["running"]);
    assert!(report.step(3).is_empty());
    assert_eq!(report.runs("later")[0].0, 4);
    assert_eq!(report.finish_order, ["waiting", "running", "later"]);
}

#[test]
fn priority_policy_admits_by_priority_then_arrival() {
    let arrivals = vec![
        arrive("background", tokens(1, 4), 2).priority(5),
        arrive("urgent-1", tokens(2, 4), 2).priority(-1),
        arrive("normal", tokens(3, 4), 2),
        arrive("urgent-2", tokens(4, 4), 2).priority(-1),
    ];
    let priority = SchedulerConfig {
        policy: SchedulingPolicy::Priority,
        ..config(64, 1, 4, 64, 64)
    };
    let report = check(&case(priority, arrivals.clone()));
    assert_eq!(
        report.finish_order,
        ["urgent-1", "urgent-2", "normal", "background"]
    );
    let report = check(&case(config(64, 1, 4, 64, 64), arrivals));
    assert_eq!(
        report.finish_order,
        ["background", "urgent-1", "normal", "urgent-2"]
    );
}

#[test]
fn sequences_longer_than_the_model_or_the_cache_are_refused_or_capped() {
    let report = check(&case(
        config(64, 8, 4, 64, 16),
        vec![
            arrive("too-long", tokens(1, 17), 4),
            arrive("exact", tokens(2, 16), 5),
            arrive("near", tokens(3, 12), 10),
            arrive("short", tokens(4, 3), 2),
        ],
    ));
    assert_eq!(
        report.refused["too-long"],
        AddRequestError::TooLong {
            num_tokens: 17,
            max_len: 16
        }
    );
    assert_eq!(report.request("exact").num_output_tokens(), 1);
    assert_eq!(report.request("near").num_output_tokens(), 4);
    assert_eq!(
        report.request("near").finish_reason(),
        Some(FinishReason::Length)
    );
    assert_eq!(report.request("short").num_output_tokens(), 2);

    // A model context beyond the whole pool (4 blocks of 4): the pool is the limit.
    let report = check(&case(
        config(64, 8, 4, 4, 1000),
        vec![
            arrive("too-long", tokens(1, 17), 4),
            arrive("capped", tokens(2, 10), 100),
        ],
    ));
    assert!(report.refused.contains_key("too-long"));
    assert_eq!(report.request("capped").num_tokens(), 16);
}

#[test]
fn the_callers_stop_check_ends_requests() {
    let prompt = tokens(7, 9);
    let (expected, _) = reference(&prompt, 100, 64, Stop::Never);
    assert!(!expected[..2].contains(&expected[2]));
    let mut stopping = case(
        config(64, 8, 4, 64, 64),
        vec![
            arrive("stops", prompt, 100),
            arrive("other", tokens(8, 5), 4),
        ],
    );
    stopping.stop = Stop::Token(expected[2]);
    let report = check(&stopping);
    let request = report.request("stops");
    assert_eq!(request.finish_reason(), Some(FinishReason::Stop));
    assert_eq!(request.output_ids(), &expected[..3]);
}

#[test]
fn random_workloads_finish_correctly_and_leave_nothing_behind() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let bases: Vec<Vec<u32>> = (0..3).map(|i| tokens(100 + i, 40)).collect();
    // What the rounds exercised, to know the workloads are not too tame.
    let (mut preemptions, mut hits, mut refused) = (0, 0, 0);
    let mut reasons = HashSet::new();
    for round in 0..150 {
        let block_size = [1, 2, 4, 16][rng.below(4) as usize];
        let max_model_len = 64;
        let num_blocks = (max_model_len / block_size).max(1) + rng.below(40) as usize;
        let chunked = rng.below(4) != 0;
        let budget = if chunked {
            [1, 5, 16, 64][rng.below(4) as usize]
        } else {
            64 + rng.below(16) as usize
        };
        let config = SchedulerConfig {
            max_num_batched_tokens: budget,
            max_num_seqs: 1 + rng.below(8) as usize,
            enable_chunked_prefill: chunked,
            policy: if rng.below(2) == 0 {
                SchedulingPolicy::Fcfs
            } else {
                SchedulingPolicy::Priority
            },
            block_size,
            num_blocks,
            enable_prefix_caching: rng.below(4) != 0,
            max_model_len,
        };
        let mut arrivals = Vec::new();
        let mut aborts = Vec::new();
        for i in 0..(1 + rng.below(24)) {
            let base = &bases[rng.below(3) as usize];
            let shared = rng.below(41) as usize;
            let tail = rng.below(30) as usize;
            let mut prompt = base[..shared].to_vec();
            prompt.extend(tokens(1000 + round * 100 + i as u32, tail));
            if prompt.is_empty() {
                prompt.push(1);
            }
            let id = format!("r{i}");
            let step = 1 + rng.below(30);
            if rng.below(6) == 0 {
                aborts.push((step + rng.below(10), id.clone()));
            }
            arrivals.push(
                arrive(&id, prompt, 1 + rng.below(20) as usize)
                    .at(step)
                    .priority(rng.below(3) as i64 - 1),
            );
        }
        let stop = match rng.below(3) {
            0 => Stop::Never,
            _ => Stop::Multiple(17),
        };
        let case = Case {
            config,
            arrivals,
            aborts,
            stop,
        };
        let report = check(&case);
        let served = report.finished.len() + report.refused.len();
        assert_eq!(served, case.arrivals.len(), "round {round}: {case:?}");
        preemptions += report.total_preemptions;
        hits += report.prefix_stats.hits;
        refused += report.refused.len();
        reasons.extend(report.finished.values().filter_map(Request::finish_reason));
    }
    assert!(preemptions > 0 && hits > 0 && refused > 0);
    assert_eq!(reasons.len(), 3, "{reasons:?}");
}

/// xorshift64*: deterministic workloads without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn finish_request_frees_at_once() {
    let mut scheduler = Scheduler::new(config(64, 8, 4, 16, 64)).unwrap();
    scheduler
        .add_request(Request::new("a", tokens(1, 10)))
        .unwrap();
    scheduler
        .add_request(Request::new("b", tokens(2, 10)))
        .unwrap();
    let output = scheduler.schedule();
    scheduler.update_from_output(&output, &[1, 2]).unwrap();
    assert_eq!(scheduler.kv_cache().block_table("a").len(), 3);
    let a = scheduler.finish_request("a", FinishReason::Stop).unwrap();
    assert_eq!(a.finish_reason(), Some(FinishReason::Stop));
    assert_eq!(a.output_ids(), &[1]);
    assert!(scheduler.kv_cache().block_table("a").is_empty());
    assert!(scheduler.finish_request("a", FinishReason::Stop).is_none());
    assert!(scheduler.abort_request("nobody").is_none());
    let output = scheduler.schedule();
    assert_eq!(
        output.batch().map(|s| s.request_id).collect::<Vec<_>>(),
        ["b"]
    );
    let aborted = scheduler.abort_all();
    assert_eq!(aborted.len(), 1);
    assert!(scheduler.is_empty());
    // b was aborted between schedule() and its update: the update skips it.
    let update = scheduler.update_from_output(&output, &[3]).unwrap();
    assert!(update.new_tokens.is_empty());
    assert!(scheduler.is_empty());
}

#[test]
fn update_refuses_mismatched_or_stale_outputs() {
    let mut scheduler = Scheduler::new(config(64, 8, 4, 16, 64)).unwrap();
    scheduler
        .add_request(Request::new("a", tokens(1, 5)))
        .unwrap();
    let first = scheduler.schedule();
    assert_eq!(
        scheduler.update_from_output(&first, &[]).err(),
        Some(UpdateError::SampledCountMismatch {
            expected: 1,
            got: 0
        })
    );
    // The step failed and is scheduled again: the same tokens, the same blocks.
    let second = scheduler.schedule();
    assert_eq!(
        second.scheduled_running[0].token_ids,
        first.scheduled_new[0].token_ids
    );
    assert_eq!(
        second.scheduled_running[0].block_table,
        first.scheduled_new[0].block_table
    );
    assert_eq!(
        scheduler.update_from_output(&first, &[7]).err(),
        Some(UpdateError::StaleOutput {
            got: 1,
            pending: Some(2)
        })
    );
    let update = scheduler.update_from_output(&second, &[7]).unwrap();
    assert_eq!(update.new_tokens, [0]);
    let a = scheduler.running_request(0).unwrap();
    assert_eq!((a.request_id(), a.output_ids()), ("a", &[7][..]));
    assert!(matches!(
        scheduler.update_from_output(&second, &[7]),
        Err(UpdateError::StaleOutput { pending: None, .. })
    ));
}

#[test]
fn bad_configs_and_requests_are_refused() {
    let base = config(64, 8, 4, 16, 64);
    let refused = |config: SchedulerConfig| Scheduler::new(config).err();
    assert_eq!(
        refused(SchedulerConfig {
            max_num_batched_tokens: 0,
            ..base.clone()
        }),
        Some(SchedulerConfigError::ZeroTokenBudget)
    );
    assert_eq!(
        refused(SchedulerConfig {
            max_num_seqs: 0,
            ..base.clone()
        }),
        Some(SchedulerConfigError::ZeroMaxNumSeqs)
    );
    assert_eq!(
        refused(SchedulerConfig {
            max_model_len: 0,
            ..base.clone()
        }),
        Some(SchedulerConfigError::ZeroMaxModelLen)
    );
    assert_eq!(
        refused(SchedulerConfig {
            block_size: 0,
            ..base.clone()
        }),
        Some(SchedulerConfigError::KvCache(
            KvCacheConfigError::ZeroBlockSize
        ))
    );
    assert_eq!(
        refused(SchedulerConfig {
            enable_chunked_prefill: false,
            max_num_batched_tokens: 32,
            ..base.clone()
        }),
        Some(SchedulerConfigError::BudgetBelowMaxLen {
            budget: 32,
            max_len: 64
        })
    );

    let mut scheduler = Scheduler::new(base).unwrap();
    scheduler.add_request(Request::new("a", vec![1])).unwrap();
    assert_eq!(
        scheduler.add_request(Request::new("a", vec![2])),
        Err(AddRequestError::DuplicateId("a".into()))
    );
    assert_eq!(
        scheduler.add_request(Request::new("e", vec![])),
        Err(AddRequestError::EmptyPrompt)
    );
    let output = scheduler.schedule();
    let update = scheduler.update_from_output(&output, &[5]).unwrap();
    let finished = scheduler
        .finish_running(&[(update.new_tokens[0], FinishReason::Length)])
        .into_iter()
        .next()
        .unwrap();
    assert_eq!(finished.finish_reason(), Some(FinishReason::Length));
    assert_eq!(
        scheduler.add_request(finished),
        Err(AddRequestError::NotWaiting(RequestStatus::FinishedLength))
    );
    // A finished request's id is free again.
    scheduler.add_request(Request::new("a", vec![1])).unwrap();
}

#[test]
fn output_debug_never_shows_tokens() {
    let mut scheduler = Scheduler::new(config(64, 8, 4, 16, 64)).unwrap();
    scheduler
        .add_request(Request::new("visible-id", vec![31_337, 27_182, 16_180]))
        .unwrap();
    let output = scheduler.schedule();
    let printed = format!("{output:?} {scheduler:?}");
    assert!(printed.contains("visible-id"));
    for secret in ["31337", "27182", "16180"] {
        assert!(!printed.contains(secret), "{printed}");
    }
}

#[test]
fn reset_prefix_cache_needs_an_idle_pool() {
    let mut scheduler = Scheduler::new(config(64, 8, 4, 16, 64)).unwrap();
    scheduler
        .add_request(Request::new("a", tokens(1, 9)))
        .unwrap();
    let output = scheduler.schedule();
    assert!(!scheduler.reset_prefix_cache());
    let update = scheduler.update_from_output(&output, &[1]).unwrap();
    // Still running: its blocks are held.
    assert!(!scheduler.reset_prefix_cache());
    scheduler.finish_running(&[(update.new_tokens[0], FinishReason::Length)]);
    assert_eq!(scheduler.kv_cache().pool().num_cached_blocks(), 2);
    assert!(scheduler.reset_prefix_cache());
    assert_eq!(scheduler.kv_cache().pool().num_cached_blocks(), 0);
    scheduler
        .add_request(Request::new("b", tokens(1, 9)))
        .unwrap();
    let output = scheduler.schedule();
    assert_eq!(output.scheduled_new[0].num_computed_tokens, 0);
}
