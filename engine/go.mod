module tlsstorm/engine

go 1.26
