//! Policy engine: deny-first regex rules compiled into RegexSets; pure, explainable evaluate().
#![forbid(unsafe_code)]
