"""RabbitMQ specifics: a job longer than the broker's consumer timeout still ends once."""

import os

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.fire, pytest.mark.rabbitmq_only]


def test_a_job_outliving_the_consumer_timeout_is_not_run_twice(broker, make_agent, facility, client, reliability_rows):
    def rabbit_env(key: str, value: str) -> None:
        broker.ctl("eval", "application:set_env(rabbit, %s, %s)." % (key, value))

    facility.script("CNCS", """
        import sys, time
        open(sys.argv[2] + "ran", "a").write("x")
        time.sleep(75)
    """)
    rabbit_env("consumer_timeout", "2000")
    try:
        agent = make_agent(task_time_limit_minutes=5).start()
        client.send(agent.q("reduction_data_ready"), facility.run("CNCS", "IPTS-1", 1))
        complete = client.wait(agent.q("reduction_complete"), timeout=150)
    finally:
        rabbit_env("consumer_timeout", "1800000")
    assert [m["run_number"] for m in complete] == ["1"]
    log = agent.log()
    assert "lost broker connection" in log and "rejoins its running job" in log
    assert open(os.path.join(facility.output_dir("CNCS", "IPTS-1"), "ran")).read() == "x"
    assert len(client.get(agent.q("reduction_complete"))) == 1
    reliability_rows.record(
        "rabbitmq_consumer_timeout",
        "RabbitMQ consumer_timeout set to 2 s; one 75 s reduction",
        "the broker closed the channel while the job ran; the redelivery rejoined the running job; "
        "the script ran once and 1 COMPLETE was sent")
