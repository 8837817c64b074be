%% Register bench users in a running ejabberd node through ejabberd's own API
%% (ejabberd_auth:try_register/3, what `ejabberdctl register` calls), in one Erlang VM instead
%% of one `ejabberdctl register` process (about 1 s each) per user.
%%
%%   escript ejabberd-register.escript NODE HOST PATTERN N PASSWORD
%%
%% PATTERN's "{n}" is replaced by 0 … N-1. Run as the ejabberd user (its ~/.erlang.cookie).
main([Node, Host, Pattern, N, Password]) ->
    {ok, _} = net_kernel:start([list_to_atom("jfreg" ++ os:getpid()), shortnames]),
    Target = list_to_atom(Node),
    pong = net_adm:ping(Target),
    Users = [lists:flatten(string:replace(Pattern, "{n}", integer_to_list(I)))
             || I <- lists:seq(0, list_to_integer(N) - 1)],
    Results = [rpc:call(Target, ejabberd_auth, try_register,
                        [list_to_binary(U), list_to_binary(Host), list_to_binary(Password)])
               || U <- Users],
    Bad = [R || R <- Results, R =/= ok, R =/= {error, exists}],
    case Bad of
        [] -> io:format("ejabberd-register: ~b users ready~n", [length(Users)]);
        [First | _] -> io:format("ejabberd-register: ~b failures, first: ~p~n", [length(Bad), First]),
                       halt(1)
    end.
