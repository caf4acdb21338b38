# step(COMMAND...): runs a command from a ctest -P driver, printing its output, and fails the test with the command,
# its status and its output when it does not succeed. Shared by tests/consumer/run.cmake and tests/c_abi/run.cmake.
function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "step failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message("${out}")
endfunction()
