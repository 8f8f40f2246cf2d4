"""The manager example in C: three processes that know only the manager's
address append "data" to the list it holds, and the list has three items."""
from test_examples_process import run_c_example


def test_c_example():
    assert run_c_example("manager").stdout == "['data', 'data', 'data']\n"
