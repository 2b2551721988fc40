-- Group membership is read from the broker's group coordinator (DescribeGroups), which
-- Apache Kafka answers: the members' own record of it, kept while the broker could not be
-- asked, goes.
drop table consumer_members;
