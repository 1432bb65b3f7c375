insert into bench_commits (payload) values ('x');
