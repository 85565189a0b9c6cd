"""The producer: logs in, a live Kafka event stream out.

movielens    ml-latest-small (folder, zip or checked download) -> ordered events + items
synthetic    a seeded product funnel with hidden intent and its ground truth, lazily
pacing       event time -> wall time (max, realtime, N times faster), injectable clock
replay       events -> the events topic (keyed by user), items -> Redis, a summary
commands     `engage replay movielens|synthetic`
"""
