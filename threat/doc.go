// Package threat is the threat-detection side of AllSource Guard: detectors
// over the committed audit log, scoring, the per-tenant response policy that
// turns a detection into automatic actions, the adaptive rate limiter, and
// the alert sinks (a signed webhook and Prometheus counters).
//
// Why it is shaped this way:
//
//   - Detection runs on the raft leader only, over audit entries that are
//     already committed (Runner). Every decision is therefore made once, from
//     replicated facts, and the detection, the watermark of what has been
//     analysed and the automatic actions are applied together by one raft
//     command (fsm.CmdRecordAnomalies). A new leader resumes from the
//     replicated watermark: it neither misses an entry nor repeats an action.
//     Anomaly ids are derived from the triggering entry, so even a re-proposal
//     is recognised by Apply.
//   - The detectors (Engine) are pure functions of the audit stream: they read
//     time from the entries, never from a clock, so a recorded stream replays
//     to the same detections. Their state is bounded (sliding windows and
//     LRUs of actors) and rebuilt on a new leader by replaying the recent
//     window of the log. The anomaly_detected entries in that log restore the
//     cool-downs, so a replay does not raise what was already raised.
//   - A Detection carries its score in [0, 1] and the factors that produced
//     it; Recommend maps a score to Monitor < Alert < RequireMFA < Block <
//     RevokeAccess, and Plan maps that, through the tenant's policy, to the
//     actions proposed.
//   - The adaptive limiter (Adaptive) is a pure decision function over edge
//     usage reports and load samples with an injected clock; its output is an
//     ordinary CmdSetRateLimit with a Reason, so edges enforce it like any
//     other limit.
package threat
