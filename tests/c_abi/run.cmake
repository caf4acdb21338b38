# ctest driver of the C ABI test: install the build into WORK_DIR/prefix, compile check.c and examples/c/forward.c
# with the C compiler (C11, -Wall -Werror) against it through pkg-config, write a tiny model and the C++ reference
# results, then run both C programs against the installed libdsv4.so.
file(REMOVE_RECURSE "${WORK_DIR}")
include("${CMAKE_CURRENT_LIST_DIR}/../cmake_step.cmake")
step(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
file(GLOB_RECURSE pcs "${WORK_DIR}/prefix/*/dsv4.pc")
list(GET pcs 0 pc)
get_filename_component(pcdir "${pc}" DIRECTORY)
set(ENV{PKG_CONFIG_PATH} "${pcdir}")
execute_process(COMMAND pkg-config --cflags --libs dsv4 OUTPUT_VARIABLE flags OUTPUT_STRIP_TRAILING_WHITESPACE
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config dsv4 failed")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
execute_process(COMMAND pkg-config --variable=libdir dsv4 OUTPUT_VARIABLE libdir OUTPUT_STRIP_TRAILING_WHITESPACE)
foreach(prog check:${SOURCE_DIR}/tests/c_abi/check.c forward:${SOURCE_DIR}/examples/c/forward.c)
  string(REPLACE ":" ";" parts "${prog}")
  list(GET parts 0 name)
  list(GET parts 1 src)
  step(${C_COMPILER} -std=c11 -Wall -Wextra -Werror -pedantic "${src}" -o "${WORK_DIR}/${name}" ${flags}
       -Wl,-rpath,${libdir})
endforeach()
step("${TOOL}" synth --preset tiny --seed 12 --out "${WORK_DIR}/model")
step("${REF}" "${WORK_DIR}/model" "${WORK_DIR}/ref")
step("${WORK_DIR}/check" "${WORK_DIR}/model" "${WORK_DIR}/ref")
step("${WORK_DIR}/forward" "${WORK_DIR}/model")
