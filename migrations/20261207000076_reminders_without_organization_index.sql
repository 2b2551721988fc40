-- No query reads the timers by organization alone: the API reads one by its invoice (the
-- primary key) within the caller's organization, the scheduler by `payment_reminders_due`.
-- The index was one more entry written for every timer and for every cancellation of one
-- (a state change is no HOT update: the due index's predicate names the state).
drop index payment_reminders_org;
